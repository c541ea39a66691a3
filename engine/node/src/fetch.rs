//! Fetching objects from an origin into a directory: request each by name, join its session
//! with the ordinary receiver ([`crate::receive`]), verify, put it in place.
//!
//! Each object is received into a staging directory of its own,
//! `OUT/.blockcast-partial/<BLAKE3 of the object>/`, and renamed to `OUT/<name>` once whole
//! and verified: a reader of `OUT` never sees a half-written object, an object that changed
//! at the origin replaces the old copy in one step, and several objects can be received at
//! once (each receive owns its staging directory). A fetch that stops part-way leaves its
//! staging directory; the next fetch of the same content receives into it again, and resumes
//! from what the receiver's own state there says it holds. An object already whole at
//! `OUT/<name>` (same size and BLAKE3 as the origin's) is not fetched at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blockcast_proto::auth::hex;

use crate::client::{self, Answer, ClientConfig, Grant};
use crate::events::{EventSink, NodeEvent};
use crate::{NodeError, ReceiveConfig, ReceiveProgress, ReceiveSummary};

/// Where staging directories live, under the output directory.
pub const PARTIAL_DIR: &str = ".blockcast-partial";

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    pub client: ClientConfig,
    /// The directory objects go to (under their names).
    pub out: PathBuf,
    /// Give up on a session not heard within this long.
    pub receive_timeout: Duration,
    pub rcvbuf: usize,
    /// Receive threads per transfer.
    pub threads: usize,
    /// Sessions that end before the object is whole are asked for again this many times.
    pub retries: u32,
}

/// One object fetched (or found whole already).
#[derive(Clone, Debug)]
pub struct Fetched {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub hash: [u8; 32],
    pub seconds: f64,
    /// It was already whole: nothing was received.
    pub held: bool,
    /// The session it came from.
    pub session: Option<u32>,
    /// The receiver's summary (none when held).
    pub receive: Option<ReceiveSummary>,
}

/// Fetches `name` into `cfg.out`. `expect`: the object's BLAKE3 when already known (from a
/// checked catalog: the session must carry exactly that); otherwise the origin's answer says
/// it. `progress` sees the receiver's reports.
pub fn fetch_one(
    cfg: &FetchConfig,
    name: &str,
    expect: Option<[u8; 32]>,
    stop: &AtomicBool,
    events: &EventSink,
    progress: &mut dyn FnMut(&ReceiveProgress),
) -> Result<Fetched, NodeError> {
    let started = Instant::now();
    let target = cfg.out.join(name);
    // Whole already? Ask what the origin has (a lookup starts no session) when the file is
    // there with a size to compare.
    if let Ok(meta) = std::fs::metadata(&target) {
        let (size, hash) = match expect {
            Some(h) => (None, Some(h)),
            None => match client::request(&cfg.client, &[name.to_owned()], true)?.pop() {
                Some(Answer::Found { size, hash }) => (Some(size), Some(hash)),
                Some(Answer::NotFound) => return Err(not_in_catalog(name, cfg.client.origin)),
                _ => (None, None),
            },
        };
        if let Some(hash) = hash {
            if size.is_none_or(|s| s == meta.len()) && file_hash(&target).ok() == Some(hash) {
                events(NodeEvent::ObjectHeld {
                    object: name.to_owned(),
                    blake3: hex(&hash),
                });
                return Ok(Fetched {
                    name: name.to_owned(),
                    path: target,
                    bytes: meta.len(),
                    hash,
                    seconds: started.elapsed().as_secs_f64(),
                    held: true,
                    session: None,
                    receive: None,
                });
            }
        }
    }
    let mut tries = 0;
    loop {
        let grant = match client::request(&cfg.client, &[name.to_owned()], false)?.pop() {
            Some(Answer::Granted(g)) => g,
            Some(Answer::NotFound) => return Err(not_in_catalog(name, cfg.client.origin)),
            Some(Answer::TimedOut { waited: true }) => {
                return Err(NodeError::Incomplete {
                    blocks_done: 0,
                    blocks: 0,
                    why: "the origin kept saying to wait (still hashing the object, or busy)",
                })
            }
            _ => {
                return Err(NodeError::NoServer {
                    waited_secs: cfg.client.timeout.as_secs_f64(),
                    refused: 0,
                })
            }
        };
        if expect.is_some_and(|h| h != grant.hash) {
            return Err(NodeError::Config(format!(
                "the origin's {name:?} is not the content its catalog named (it changed meanwhile: ask again)"
            )));
        }
        events(NodeEvent::TransferStarted {
            object: name.to_owned(),
            session: grant.session,
            group: grant.group.to_string(),
        });
        match receive_grant(cfg, name, &grant, stop, progress) {
            Ok(summary) => {
                let staging = staging_dir(&cfg.out, &grant.hash);
                place(&staging.join(name), &target)?;
                // The staging directory (and the receiver's state in it) is no longer needed.
                let _ = std::fs::remove_dir_all(&staging);
                // And their parent, once no other transfer uses it.
                let _ = std::fs::remove_dir(cfg.out.join(PARTIAL_DIR));
                let seconds = started.elapsed().as_secs_f64();
                events(NodeEvent::ObjectSynced {
                    object: name.to_owned(),
                    path: target.display().to_string(),
                    bytes: grant.size,
                    blake3: hex(&grant.hash),
                    seconds,
                });
                return Ok(Fetched {
                    name: name.to_owned(),
                    path: target,
                    bytes: grant.size,
                    hash: grant.hash,
                    seconds,
                    held: false,
                    session: Some(grant.session),
                    receive: Some(summary),
                });
            }
            // The session ended or went quiet before the object was whole (it closed as we
            // were granted it, or the origin restarted): ask again, keeping what arrived.
            Err(NodeError::Incomplete { .. } | NodeError::NoServer { .. })
                if tries < cfg.retries && !stop.load(Ordering::Relaxed) =>
            {
                tries += 1;
                tracing::info!(
                    object = name,
                    tries,
                    "the session ended early: asking again"
                );
            }
            Err(e) => return Err(e),
        }
    }
}

fn not_in_catalog(name: &str, origin: SocketAddr) -> NodeError {
    NodeError::NotInCatalog {
        name: name.to_owned(),
        origin,
    }
}

/// The staging directory of the object whose BLAKE3 is `hash`.
pub fn staging_dir(out: &Path, hash: &[u8; 32]) -> PathBuf {
    out.join(PARTIAL_DIR).join(hex(hash))
}

/// Receives the session `grant` names into the object's staging directory. The session must
/// carry exactly the object asked for: its one object's BLAKE3 is pinned (`--expect`), and its
/// name must be `name` (checked as soon as the manifest is known).
fn receive_grant(
    cfg: &FetchConfig,
    name: &str,
    grant: &Grant,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ReceiveProgress),
) -> Result<ReceiveSummary, NodeError> {
    let SocketAddr::V4(group) = grant.group else {
        return Err(NodeError::Config(format!(
            "the origin granted an IPv6 group ({}): not supported",
            grant.group
        )));
    };
    let staging = staging_dir(&cfg.out, &grant.hash);
    std::fs::create_dir_all(&staging).map_err(|source| NodeError::Output {
        path: staging.clone(),
        source,
    })?;
    let rcfg = receive_config(cfg, group, staging, grant.hash)?;
    // Stops on the user's stop, or when the session carries another object than asked.
    let mine = AtomicBool::new(false);
    let mut wrong: Option<String> = None;
    let r = crate::receive(&rcfg, &mine, &mut |p| {
        if stop.load(Ordering::Relaxed) {
            mine.store(true, Ordering::Relaxed);
        }
        if let Some((got, _)) = p.objects.first() {
            if p.objects.len() != 1 || got != name {
                wrong = Some(got.clone());
                mine.store(true, Ordering::Relaxed);
            }
        }
        progress(p);
    });
    if let Some(got) = wrong {
        return Err(NodeError::Config(format!(
            "the origin's session for {name:?} carries {got:?}: refused"
        )));
    }
    r
}

/// The receiver's configuration for one granted session. Resuming needs nothing more than
/// receiving into the same staging directory again.
pub(crate) fn receive_config(
    cfg: &FetchConfig,
    group: std::net::SocketAddrV4,
    out: PathBuf,
    hash: [u8; 32],
) -> Result<ReceiveConfig, NodeError> {
    Ok(ReceiveConfig {
        group,
        iface: cfg.client.iface,
        out,
        timeout: cfg.receive_timeout,
        rcvbuf: cfg.rcvbuf,
        id: u64::from_le_bytes(crate::keys::random_bytes()?),
        play: None,
        start_at: None,
        http: None,
        fallback: Vec::new(),
        failover_after: Duration::from_secs(3),
        split: None,
        threads: cfg.threads.max(1),
        trust: cfg.client.trust.clone(),
        // A one-object session whose object's BLAKE3 is this (wire.md §15.5).
        expect: Some(hash),
        secret: None,
        preallocate: true,
        datapath: crate::Datapath::Socket,
        // The staging directory's state file was written by an earlier fetch of this very
        // content, after the blocks it names were synced.
        verify_existing: false,
        // The staging directory is fetch's own: a file there that no state file names is
        // not ours to write over.
        overwrite: false,
        block_buffers: crate::DEFAULT_BLOCK_BUFFER_BYTES,
    })
}

/// Moves a verified file into place (its directories made), durably.
fn place(from: &Path, to: &Path) -> Result<(), NodeError> {
    let err = |source| NodeError::Output {
        path: to.to_path_buf(),
        source,
    };
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::rename(from, to).map_err(err)?;
    if let Some(parent) = to.parent() {
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// BLAKE3 of a file's bytes.
pub fn file_hash(path: &Path) -> std::io::Result<[u8; 32]> {
    let f = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f)?;
    Ok(*h.finalize().as_bytes())
}
