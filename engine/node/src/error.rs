//! Errors a node reports, each with the context a user needs to act on it. Each variant means
//! one kind of failure, so a caller can map it to one exit code (the CLI does, cli/src/exit.rs).

use std::path::PathBuf;

use blockcast_io::{BatchError, IoError};

use crate::names::shown;

/// Why a node stopped before finishing its job.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A socket or ring could not be set up or used.
    #[error("{0}")]
    Io(#[from] IoError),
    /// An input could not be read.
    #[error("cannot read {}: {source}", shown(path))]
    Input {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The output could not be created or written.
    #[error("cannot write {}: {source}", shown(path))]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is already where an object goes and no state file of ours names it (not a
    /// partial file of an earlier receive): it is someone else's, and kept.
    #[error("{} exists and is not a partial file of an earlier receive: not overwritten (--overwrite replaces it)", shown(path))]
    OutputExists { path: PathBuf },
    /// Another receive (or relay) is writing into the same output: it holds the lock.
    #[error(
        "{} is in use by another blockcast receive or relay (it holds {}); nothing was written",
        shown(path),
        shown(lock)
    )]
    OutputBusy { path: PathBuf, lock: PathBuf },
    /// An input changed while it was being served (truncated, rewritten): what receivers got
    /// of it would not match its hashes.
    #[error(
        "{} changed while it was being served ({what}): the session was stopped",
        shown(path)
    )]
    InputChanged { path: PathBuf, what: String },
    /// The datapath asked for (`--datapath xdp`) cannot work here; the message says why.
    #[error("{0}")]
    Datapath(String),
    /// A configuration the protocol refuses: other flags or inputs fix it.
    #[error("{0}")]
    Config(String),
    /// The HTTP address cannot be listened on (in use, not local).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A thread of the node could not be started, or panicked (its panic message went to
    /// stderr when it happened).
    #[error("{what} {kind}")]
    Thread {
        /// Which thread, as a noun phrase: "the upstream thread", "a receiver thread".
        what: &'static str,
        kind: ThreadFailure,
    },
    /// Units could not be queued for sending.
    #[error("{op}: {source}")]
    Send {
        /// What was being sent, e.g. "first pass" (a data thread).
        op: &'static str,
        source: BatchError,
    },
    /// A failure that is no one's configuration: a broken invariant of this program, or the
    /// system out of something every node needs (descriptors for an eventfd).
    #[error("{0}")]
    Internal(String),
    /// No server was heard within the timeout (`refused`: announces heard but refused, for
    /// their signatures or for other content than pinned).
    #[error("{}", no_server(*.waited_secs, *.refused))]
    NoServer { waited_secs: f64, refused: u64 },
    /// The server went quiet or ended the session before everything arrived.
    #[error("{why} with {blocks_done} of {blocks} blocks verified (partial files kept)")]
    Incomplete {
        blocks_done: u64,
        blocks: u64,
        why: &'static str,
    },
    /// An origin has no object of that name.
    #[error("{name:?} is not in the catalog of {origin}")]
    NotInCatalog {
        name: String,
        origin: std::net::SocketAddr,
    },
    /// Stopped by the user (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
}

/// How a thread failed.
#[derive(Debug, thiserror::Error)]
pub enum ThreadFailure {
    /// The OS refused a new thread (a thread or memory limit).
    #[error("could not start: {0}")]
    Spawn(std::io::Error),
    /// It panicked.
    #[error("panicked")]
    Panicked,
}

impl NodeError {
    /// `what` (a noun phrase: "a receiver thread") could not be started.
    pub fn spawn(what: &'static str, e: std::io::Error) -> Self {
        NodeError::Thread {
            what,
            kind: ThreadFailure::Spawn(e),
        }
    }

    /// `what` (a noun phrase: "the upstream thread") panicked.
    pub fn panicked(what: &'static str) -> Self {
        NodeError::Thread {
            what,
            kind: ThreadFailure::Panicked,
        }
    }
}

fn no_server(waited_secs: f64, refused: u64) -> String {
    if refused == 0 {
        format!("no server heard on the group within {waited_secs:.0} s")
    } else {
        format!(
            "no acceptable server heard on the group within {waited_secs:.0} s ({refused} announce(s) refused: unsigned, signed by a key not trusted, or other content than --expect pins)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_failures_read_as_sentences() {
        assert_eq!(
            NodeError::panicked("the upstream thread").to_string(),
            "the upstream thread panicked"
        );
        let e = std::io::Error::from_raw_os_error(libc::EAGAIN);
        assert!(NodeError::spawn("a receiver thread", e)
            .to_string()
            .starts_with("a receiver thread could not start: "));
    }

    #[test]
    fn messages_keep_their_context() {
        let e = NodeError::Input {
            path: "/srv/a.iso".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(e.to_string(), "cannot read /srv/a.iso: entity not found");
        let exists = NodeError::OutputExists {
            path: "/out/a\u{1b}[2J.iso".into(),
        };
        let shown = exists.to_string();
        assert!(shown.starts_with("/out/a\\u{1b}[2J.iso exists"), "{shown}");
        assert!(std::error::Error::source(&e).is_some());
        let e = NodeError::Send {
            op: "first pass",
            source: BatchError::QueueFull,
        };
        assert_eq!(e.to_string(), "first pass: all send slots are in flight");
        assert_eq!(
            NodeError::Incomplete {
                blocks_done: 3,
                blocks: 8,
                why: "the server ended the session"
            }
            .to_string(),
            "the server ended the session with 3 of 8 blocks verified (partial files kept)"
        );
    }
}
