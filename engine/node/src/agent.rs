//! The agent: keeps a directory in sync with what it subscribes to at an origin (docs/DESIGN.md:
//! a subscription + many receivers + a state directory).
//!
//! Every `poll` it fetches the origin's catalog (checked against the trusted keys), picks the
//! objects its patterns match whose BLAKE3 differs from what it holds, and fetches them, at
//! most `concurrency` at once, each through [`crate::fetch::fetch_one`] (request, the ordinary
//! receiver into a staging directory, verify, rename into place). After each object it records
//! it in its state file (`STATE_DIR/state.json`, written whole under a temporary name, synced,
//! renamed) and runs the hook, if any, with the object's name, path, size and BLAKE3 in its
//! environment.
//!
//! Restarting loses nothing: objects recorded (and still there, at their size) are not
//! fetched again; an object whose record was lost but whose file is whole is found by its hash
//! and not fetched either; a transfer that was cut off receives into its staging directory
//! again and resumes from the receiver's own state there. A hook that did not run to success
//! runs again at the next start.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use blockcast_proto::auth::{from_hex, hex};
use serde::{Deserialize, Serialize};

use crate::client;
use crate::events::{EventSink, NodeEvent};
use crate::fetch::{fetch_one, FetchConfig, Fetched};
use crate::glob::{subscribed, Pattern};
use crate::metrics::{AgentMetrics, Delta};
use crate::NodeError;

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Where to fetch from and how to receive (its `out` is the synced directory).
    pub fetch: FetchConfig,
    /// Where the agent keeps its state (default: `DIR/.blockcast-agent`).
    pub state_dir: PathBuf,
    /// Patterns of the object names to keep in sync (none: the whole catalog).
    pub subscribe: Vec<Pattern>,
    /// Transfers at once.
    pub concurrency: usize,
    /// Run with `sh -c` after each object is in place.
    pub hook: Option<String>,
    /// How often the catalog is fetched.
    pub poll: Duration,
    /// Stop once everything subscribed is held (one round, for scripts and tests).
    pub once: bool,
    /// The Prometheus endpoint's address.
    pub metrics: Option<std::net::SocketAddr>,
}

/// What an agent run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentSummary {
    pub polls: u64,
    /// Objects fetched this run.
    pub synced: Vec<String>,
    /// Subscribed objects held whole at the end.
    pub held: usize,
    /// Bytes received this run (verified).
    pub received_bytes: u64,
    pub failures: u64,
    pub seconds: f64,
}

/// One object the agent holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub blake3: String,
    pub bytes: u64,
    /// The hook ran to success for it (or there is no hook).
    pub hooked: bool,
}

/// The agent's state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub v: u32,
    pub objects: BTreeMap<String, Held>,
}

impl AgentState {
    /// Reads `dir/state.json` (absent: empty).
    pub fn load(dir: &Path) -> Result<Self, NodeError> {
        let path = dir.join("state.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| NodeError::Input {
                path,
                source: std::io::Error::other(format!("not an agent state file: {e}")),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState {
                v: 1,
                ..AgentState::default()
            }),
            Err(source) => Err(NodeError::Input { path, source }),
        }
    }

    /// Writes `dir/state.json` durably: whole under a temporary name, synced, renamed, the
    /// directory synced.
    pub fn save(&self, dir: &Path) -> Result<(), NodeError> {
        let path = dir.join("state.json");
        let err = |source| NodeError::Output {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join("state.json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// A worker's result.
struct Done {
    name: String,
    result: Result<Fetched, NodeError>,
    hook: Option<bool>,
}

/// Runs the agent until `stop` (or, with `once`, until everything subscribed is held).
pub fn agent(
    cfg: &AgentConfig,
    stop: &AtomicBool,
    events: EventSink,
    ready: &mut dyn FnMut(Option<std::net::SocketAddr>),
) -> Result<AgentSummary, NodeError> {
    let started = Instant::now();
    let state = open_state(cfg)?;
    let metrics = AgentMetrics::default();
    let side_stop = Arc::new(AtomicBool::new(false));
    let metrics_thread = match cfg.metrics {
        Some(addr) => {
            let mut r = crate::metrics::registry();
            metrics.register(&mut r);
            Some(crate::metrics::serve(addr, r, side_stop.clone())?)
        }
        None => None,
    };
    ready(metrics_thread.as_ref().map(|(_, a)| *a));
    let (tx, rx) = mpsc::channel::<Done>();
    let mut run = Run {
        cfg,
        events,
        metrics,
        state,
        summary: AgentSummary::default(),
        queue: VecDeque::new(),
        inflight: BTreeMap::new(),
        tx,
        worker_stop: Arc::new(AtomicBool::new(false)),
    };
    let result = run.owed_hooks().and_then(|()| run.run(stop, &rx));
    // In-flight transfers stop (their staging directories keep what arrived).
    run.worker_stop.store(true, Ordering::Relaxed);
    for (_, h) in std::mem::take(&mut run.inflight) {
        let _ = h.join();
    }
    side_stop.store(true, Ordering::Relaxed);
    if let Some((h, _)) = metrics_thread {
        let _ = h.join();
    }
    run.summary.seconds = started.elapsed().as_secs_f64();
    result.map(|()| run.summary)
}

/// The synced directory made, and the state read: a record whose file is gone, or not at its
/// size, is forgotten (fetched again).
fn open_state(cfg: &AgentConfig) -> Result<AgentState, NodeError> {
    let dir = &cfg.fetch.out;
    std::fs::create_dir_all(dir).map_err(|source| NodeError::Output {
        path: dir.clone(),
        source,
    })?;
    let mut state = AgentState::load(&cfg.state_dir)?;
    state.objects.retain(|name, h| {
        std::fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.len() == h.bytes)
    });
    Ok(state)
}

/// One agent run: what it holds, what it is fetching, what is queued.
struct Run<'a> {
    cfg: &'a AgentConfig,
    events: EventSink,
    metrics: AgentMetrics,
    state: AgentState,
    summary: AgentSummary,
    /// Objects to fetch, with the BLAKE3 the catalog names.
    queue: VecDeque<(String, [u8; 32])>,
    inflight: BTreeMap<String, std::thread::JoinHandle<()>>,
    tx: mpsc::Sender<Done>,
    worker_stop: Arc<AtomicBool>,
}

impl Run<'_> {
    /// The loop: poll the catalog, start transfers, take their results.
    fn run(&mut self, stop: &AtomicBool, rx: &mpsc::Receiver<Done>) -> Result<(), NodeError> {
        let mut next_poll = Instant::now();
        // With `once`: a poll after which nothing was left to do ends the run.
        let mut in_sync = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(NodeError::Interrupted);
            }
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + self.cfg.poll;
                in_sync = self.poll();
            }
            if self.cfg.once && in_sync && self.queue.is_empty() && self.inflight.is_empty() {
                return Ok(());
            }
            if self.start_transfers() {
                in_sync = false;
            }
            let Ok(done) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if self.finish(done)? {
                // Whatever else changed meanwhile is seen at once.
                next_poll = Instant::now();
            }
        }
    }

    /// Hooks that did not run to success before the last stop.
    fn owed_hooks(&mut self) -> Result<(), NodeError> {
        let Some(hook) = &self.cfg.hook else {
            return Ok(());
        };
        let owed: Vec<(String, Held)> = self
            .state
            .objects
            .iter()
            .filter(|(_, h)| !h.hooked)
            .map(|(n, h)| (n.clone(), h.clone()))
            .collect();
        let dir = &self.cfg.fetch.out;
        for (name, h) in owed {
            if run_hook(
                hook,
                &name,
                &dir.join(&name),
                h.bytes,
                &h.blake3,
                &self.events,
            ) {
                if let Some(e) = self.state.objects.get_mut(&name) {
                    e.hooked = true;
                }
            } else {
                self.metrics.hook_failures_total.inc();
            }
        }
        self.state.save(&self.cfg.state_dir)
    }

    /// The BLAKE3 held for `name`, if any.
    fn held_hash(&self, name: &str) -> Option<[u8; 32]> {
        self.state
            .objects
            .get(name)
            .and_then(|h| from_hex::<32>(&h.blake3))
    }

    /// Reads the catalog and queues what is subscribed and not held; true if nothing is left
    /// to fetch.
    fn poll(&mut self) -> bool {
        let catalog = match client::catalog(&self.cfg.fetch.client) {
            Ok((catalog, _signer)) => catalog,
            Err(e) => {
                tracing::warn!("cannot fetch the catalog: {e}");
                return false;
            }
        };
        self.summary.polls += 1;
        self.metrics.catalog_polls_total.inc();
        let (mut wanted, mut held) = (0, 0);
        let queued: BTreeSet<String> = self.queue.iter().map(|(n, _)| n.clone()).collect();
        for e in &catalog.entries {
            if !subscribed(&self.cfg.subscribe, &e.name) {
                continue;
            }
            if self.held_hash(&e.name) == Some(e.hash) {
                held += 1;
                continue;
            }
            wanted += 1;
            if !queued.contains(&e.name) && !self.inflight.contains_key(&e.name) {
                self.queue.push_back((e.name.clone(), e.hash));
            }
        }
        self.summary.held = held;
        self.metrics.objects_held.set(held as i64);
        wanted == 0 && self.inflight.is_empty()
    }

    /// Starts queued transfers up to the concurrency; true if any started.
    fn start_transfers(&mut self) -> bool {
        let mut started = false;
        while self.inflight.len() < self.cfg.concurrency.max(1) {
            let Some((name, hash)) = self.queue.pop_front() else {
                break;
            };
            started = true;
            let (fcfg, tx, stop, events, hook) = (
                self.cfg.fetch.clone(),
                self.tx.clone(),
                self.worker_stop.clone(),
                self.events.clone(),
                self.cfg.hook.clone(),
            );
            let rm = self.metrics.receiver.clone();
            let n = name.clone();
            let spawned = std::thread::Builder::new()
                .name("bc-agent-fetch".into())
                .spawn(move || {
                    let mut delta = Delta::default();
                    let result = fetch_one(&fcfg, &n, Some(hash), &stop, &events, &mut |p| {
                        if let Some(s) = &p.stats {
                            rm.update(&mut delta, s, p.bytes_verified);
                        }
                    });
                    let hook = match (&result, &hook) {
                        (Ok(f), Some(h)) => {
                            Some(run_hook(h, &n, &f.path, f.bytes, &hex(&f.hash), &events))
                        }
                        _ => None,
                    };
                    let _ = tx.send(Done {
                        name: n,
                        result,
                        hook,
                    });
                });
            match spawned {
                Ok(h) => {
                    self.inflight.insert(name, h);
                    self.metrics.transfers.set(self.inflight.len() as i64);
                }
                Err(e) => {
                    tracing::warn!("cannot start a transfer thread: {e}");
                    break;
                }
            }
        }
        started
    }

    /// Takes a transfer's result: an object in place is recorded (durably) before anything
    /// else; true if one was.
    fn finish(&mut self, done: Done) -> Result<bool, NodeError> {
        if let Some(h) = self.inflight.remove(&done.name) {
            let _ = h.join();
        }
        self.metrics.transfers.set(self.inflight.len() as i64);
        match done.result {
            Ok(f) => {
                if !f.held {
                    self.summary.synced.push(f.name.clone());
                    self.summary.received_bytes += f.bytes;
                }
                self.metrics.objects_synced_total.inc();
                if done.hook == Some(false) {
                    self.metrics.hook_failures_total.inc();
                }
                self.state.objects.insert(
                    f.name.clone(),
                    Held {
                        blake3: hex(&f.hash),
                        bytes: f.bytes,
                        hooked: done.hook != Some(false),
                    },
                );
                self.state.save(&self.cfg.state_dir)?;
                Ok(true)
            }
            Err(NodeError::Interrupted) => Ok(false),
            Err(e) => {
                self.summary.failures += 1;
                self.metrics.fetch_failures_total.inc();
                tracing::warn!(object = %done.name, "fetch failed (tried again at the next poll): {e}");
                (self.events)(NodeEvent::TransferFailed {
                    object: done.name.clone(),
                    error: e.to_string(),
                });
                Ok(false)
            }
        }
    }
}

/// Runs the hook for one object; true if it exited with 0.
fn run_hook(
    hook: &str,
    name: &str,
    path: &Path,
    bytes: u64,
    blake3: &str,
    events: &EventSink,
) -> bool {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(hook)
        .env("BLOCKCAST_OBJECT", name)
        .env("BLOCKCAST_PATH", path)
        .env("BLOCKCAST_BYTES", bytes.to_string())
        .env("BLOCKCAST_BLAKE3", blake3)
        .stdin(std::process::Stdio::null())
        .status();
    let (ok, code) = match &status {
        Ok(s) => (s.success(), s.code()),
        Err(e) => {
            tracing::warn!(object = name, "cannot run the hook: {e}");
            (false, None)
        }
    };
    if !ok {
        tracing::warn!(object = name, ?code, "the hook failed");
    }
    events(NodeEvent::Hook {
        object: name.to_owned(),
        ok,
        exit_code: code,
    });
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_survives_a_round_trip_and_a_missing_one_is_empty() {
        let d = std::env::temp_dir().join(format!("bc-agent-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(AgentState::load(&d).unwrap().objects.len(), 0);
        let mut s = AgentState {
            v: 1,
            ..AgentState::default()
        };
        s.objects.insert(
            "a/b.iso".into(),
            Held {
                blake3: hex(&[7; 32]),
                bytes: 9,
                hooked: false,
            },
        );
        s.save(&d).unwrap();
        assert_eq!(AgentState::load(&d).unwrap(), s);
        std::fs::write(d.join("state.json"), b"{not json").unwrap();
        assert!(AgentState::load(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
