//! The error type of the I/O layer: what failed (`op`), on what (`context`), and why.

use std::fmt;
use std::io;

/// An error from the I/O layer.
///
/// Every variant names the operation that failed and the object it was applied to, so a
/// one-line message is enough to act on. Setup problems that the operator can fix (an
/// interface that does not exist, io_uring being disabled) say what to change.
#[derive(Debug)]
pub enum IoError {
    /// A system call failed.
    Os {
        /// The system call or socket option, e.g. `"setsockopt(IP_ADD_MEMBERSHIP)"`.
        op: &'static str,
        /// What it was applied to, e.g. `"group 239.255.0.1:5000 on 127.0.0.1"`.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// No interface matches the name or address that was asked for.
    NoSuchInterface {
        /// The name (or address) that was asked for.
        name: String,
        /// Why it did not match (e.g. "no such interface", "has no IPv4 address").
        reason: &'static str,
        /// The interfaces that do exist, as `name (address, ...)`.
        available: Vec<String>,
    },
    /// The caller asked for something this layer cannot do (a bad argument).
    Invalid {
        /// The operation that was asked for.
        op: &'static str,
        /// What was wrong with the request.
        context: String,
    },
}

impl IoError {
    /// Wraps the last OS error (`errno`) for `op` on `context`.
    pub(crate) fn last_os(op: &'static str, context: impl Into<String>) -> Self {
        IoError::os(op, context, io::Error::last_os_error())
    }

    /// Wraps `source` for `op` on `context`.
    pub fn os(op: &'static str, context: impl Into<String>, source: io::Error) -> Self {
        IoError::Os {
            op,
            context: context.into(),
            source,
        }
    }

    /// An invalid request.
    pub(crate) fn invalid(op: &'static str, context: impl Into<String>) -> Self {
        IoError::Invalid {
            op,
            context: context.into(),
        }
    }

    /// The OS error number, if this error came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            IoError::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::Os {
                op,
                context,
                source,
            } => {
                write!(f, "{op} failed on {context}: {source}")?;
                if op.starts_with("io_uring_setup") {
                    if let Some(libc::EPERM | libc::ENOSYS) = source.raw_os_error() {
                        write!(
                            f,
                            " (io_uring is disabled here: check `sysctl kernel.io_uring_disabled` \
                             and, in a container, the seccomp profile; kernel 6.1 or newer is needed)"
                        )?;
                    }
                    if let Some(libc::ENOMEM) = source.raw_os_error() {
                        write!(f, " (raise RLIMIT_MEMLOCK: `ulimit -l`)")?;
                    }
                }
                Ok(())
            }
            IoError::NoSuchInterface {
                name,
                reason,
                available,
            } => {
                write!(f, "interface '{name}': {reason}; interfaces here: ")?;
                if available.is_empty() {
                    write!(f, "(none)")
                } else {
                    write!(f, "{}", available.join(", "))
                }
            }
            IoError::Invalid { op, context } => write!(f, "{op}: invalid request: {context}"),
        }
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IoError::Os { source, .. } => Some(source),
            _ => None,
        }
    }
}
