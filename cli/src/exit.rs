//! Exit codes (stable; README lists them) and the error categories that map to them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blockcast_node::NodeError;

/// Success.
pub const OK: u8 = 0;
/// Anything not listed below: a thread that panicked or could not start, an internal error.
pub const FAILURE: u8 = 1;
/// A usage mistake: bad flag value, group not multicast (clap's own errors also exit 2).
pub const USAGE: u8 = 2;
/// An input is missing or unreadable.
pub const INPUT: u8 = 3;
/// The output cannot be created or written (including a full disk; partial files are kept).
pub const OUTPUT: u8 = 4;
/// The network failed: unknown interface, port in use, io_uring unavailable, units that could
/// not be queued for sending.
pub const NETWORK: u8 = 5;
/// No server heard within --timeout, or the session ended before everything arrived.
pub const INCOMPLETE: u8 = 6;
/// The output is in use: another receive or relay holds its lock (nothing was written).
pub const BUSY: u8 = 7;
/// A file is where an object goes and is not a partial file of an earlier receive: kept
/// (`--overwrite` replaces it).
pub const EXISTS: u8 = 8;
/// Stopped by Ctrl-C.
pub const INTERRUPTED: u8 = 130;

/// An error that knows its exit code.
#[derive(Debug)]
pub struct Coded {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

pub fn usage(message: String) -> anyhow::Error {
    Coded {
        code: USAGE,
        message,
    }
    .into()
}

pub fn net(message: String) -> anyhow::Error {
    Coded {
        code: NETWORK,
        message,
    }
    .into()
}

pub fn input(message: String) -> anyhow::Error {
    Coded {
        code: INPUT,
        message,
    }
    .into()
}

pub fn output_err(message: String) -> anyhow::Error {
    Coded {
        code: OUTPUT,
        message,
    }
    .into()
}

pub fn incomplete(message: String) -> anyhow::Error {
    Coded {
        code: INCOMPLETE,
        message,
    }
    .into()
}

/// Maps a node error to its exit code.
pub fn node(e: NodeError) -> anyhow::Error {
    let code = match &e {
        NodeError::Io(_)
        | NodeError::Listen { .. }
        | NodeError::Send { .. }
        | NodeError::Datapath(_) => NETWORK,
        NodeError::Input { .. }
        | NodeError::InputChanged { .. }
        | NodeError::NotInCatalog { .. } => INPUT,
        NodeError::Output { .. } => OUTPUT,
        NodeError::OutputBusy { .. } => BUSY,
        NodeError::OutputExists { .. } => EXISTS,
        NodeError::Config(_) => USAGE,
        NodeError::Thread { .. } | NodeError::Internal(_) => FAILURE,
        NodeError::NoServer { .. } | NodeError::Incomplete { .. } => INCOMPLETE,
        NodeError::Interrupted => INTERRUPTED,
    };
    Coded {
        code,
        message: e.to_string(),
    }
    .into()
}

pub fn code_for(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Coded>().map_or(FAILURE, |c| c.code)
}

/// Ctrl-C sets `stop`; the running node winds down cleanly (a second Ctrl-C exits at once).
pub fn on_interrupt(stop: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(INTERRUPTED));
        }
    });
}

#[allow(dead_code)]
const _ALL: [u8; 10] = [
    OK,
    FAILURE,
    USAGE,
    INPUT,
    OUTPUT,
    NETWORK,
    INCOMPLETE,
    BUSY,
    EXISTS,
    INTERRUPTED,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: NodeError) -> u8 {
        code_for(&node(e))
    }

    #[test]
    fn a_failed_thread_or_send_is_not_a_usage_error() {
        assert_eq!(code(NodeError::panicked("a data thread")), FAILURE);
        let refused = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        assert_eq!(
            code(NodeError::spawn("the verify thread", refused)),
            FAILURE
        );
        assert_eq!(code(NodeError::Internal("eventfd: EMFILE".into())), FAILURE);
        let send = NodeError::Send {
            op: "first pass",
            source: blockcast_io::BatchError::QueueFull,
        };
        assert_eq!(code(send), NETWORK);
        assert_eq!(code(NodeError::Config("two inputs named a".into())), USAGE);
        let busy = NodeError::OutputBusy {
            path: "/srv/a".into(),
            lock: "/srv/a/.blockcast/lock".into(),
        };
        assert_eq!(code(busy), BUSY);
        let exists = NodeError::OutputExists {
            path: "/srv/a/b.iso".into(),
        };
        assert_eq!(code(exists), EXISTS);
        let changed = NodeError::InputChanged {
            path: "/srv/a.iso".into(),
            what: "truncated".into(),
        };
        assert_eq!(code(changed), INPUT);
        assert_eq!(code(NodeError::Interrupted), INTERRUPTED);
    }

    #[test]
    fn the_message_is_the_node_error_s() {
        let e = node(NodeError::panicked("the upstream thread"));
        assert_eq!(e.to_string(), "the upstream thread panicked");
    }
}
