//! Errors a node reports, each with the context a user needs to act on it.

use std::fmt;
use std::path::PathBuf;

use blockcast_io::IoError;

/// Why a node stopped before finishing its job.
#[derive(Debug)]
pub enum NodeError {
    /// A socket or ring could not be set up or used.
    Io(IoError),
    /// An input could not be read.
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The output could not be created or written.
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A configuration the protocol refuses.
    Config(String),
    /// The HTTP address cannot be listened on (in use, not local).
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// No server was heard within the timeout.
    NoServer { waited_secs: f64 },
    /// The server went quiet or ended the session before everything arrived.
    Incomplete {
        blocks_done: u64,
        blocks: u64,
        why: &'static str,
    },
    /// Stopped by the user (Ctrl-C).
    Interrupted,
    /// A thread of the node could not start, or panicked.
    Thread { what: &'static str, panicked: bool },
    /// Sending failed in a way that is not loss (the send ring broke).
    Send(String),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Io(e) => write!(f, "{e}"),
            NodeError::Input { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            NodeError::Output { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            NodeError::Config(s) => f.write_str(s),
            NodeError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            NodeError::NoServer { waited_secs } => {
                write!(f, "no server heard on the group within {waited_secs:.0} s")
            }
            NodeError::Incomplete {
                blocks_done,
                blocks,
                why,
            } => write!(
                f,
                "{why} with {blocks_done} of {blocks} blocks verified (partial files kept)"
            ),
            NodeError::Interrupted => f.write_str("interrupted"),
            NodeError::Thread {
                what,
                panicked: true,
            } => write!(f, "{what} panicked"),
            NodeError::Thread {
                what,
                panicked: false,
            } => write!(f, "cannot start {what}"),
            NodeError::Send(s) => write!(f, "send failed: {s}"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Io(e) => Some(e),
            NodeError::Input { source, .. }
            | NodeError::Output { source, .. }
            | NodeError::Listen { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<IoError> for NodeError {
    fn from(e: IoError) -> Self {
        NodeError::Io(e)
    }
}
