//! Events of the long-running nodes, for their NDJSON event log (the CLI adds the version and
//! the time to each line and writes it).

use std::sync::Arc;

use serde::Serialize;

/// Something a daemon did that an operator may want in a log.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent {
    /// The origin published a new catalog.
    Catalog {
        generation: u64,
        objects: usize,
        unready: usize,
    },
    /// The origin answered a request (at most its answer rate).
    Request {
        from: String,
        object: String,
        status: &'static str,
    },
    /// The origin started a session for an object.
    SessionStarted {
        object: String,
        session: u32,
        group: String,
        bytes: u64,
        blake3: String,
    },
    /// A session of the origin ended.
    SessionEnded {
        object: String,
        session: u32,
        reason: String,
        seconds: f64,
        receivers: usize,
        complete: usize,
        bytes_sent: u64,
        error: Option<String>,
    },
    /// A fetch (or an agent) joined an object's session.
    TransferStarted {
        object: String,
        session: u32,
        group: String,
    },
    /// An object was received, verified and put in place.
    ObjectSynced {
        object: String,
        path: String,
        bytes: u64,
        blake3: String,
        seconds: f64,
    },
    /// An object was already held whole: nothing was fetched.
    ObjectHeld { object: String, blake3: String },
    /// A transfer failed (the agent tries again at a later poll).
    TransferFailed { object: String, error: String },
    /// A hook ran for a synced object.
    Hook {
        object: String,
        ok: bool,
        exit_code: Option<i32>,
    },
}

/// Where a node sends its events.
pub type EventSink = Arc<dyn Fn(NodeEvent) + Send + Sync>;

/// A sink that drops every event.
pub fn discard() -> EventSink {
    Arc::new(|_| {})
}
