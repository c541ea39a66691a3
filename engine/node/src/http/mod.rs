//! An HTTP/1.1 endpoint that serves a receiver's objects while they are still arriving.
//!
//! One request per connection (`Connection: close`), one thread per connection (at most
//! [`HttpConfig::max_connections`]; past that a connection gets `503` and is closed).
//!
//! Routes:
//! - `GET /status`: the receive status as JSON ([`Published::status_json`]).
//! - `GET /`: the objects, one per line: `name<TAB>size`.
//! - `GET|HEAD /<name>`: the object whose manifest name equals the percent-decoded path.
//!   `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` get `206`; an unsatisfiable range gets
//!   `416`. A `Range` header that is malformed, holds several ranges, or appears more than
//!   once is ignored and the whole object is sent with `200` (RFC 9110 §14.2 lets a server
//!   ignore `Range`). `HEAD` ignores `Range` too (RFC 9110 §14.2: range handling is defined
//!   for `GET` only), so it answers `200` with the whole object's length, and never waits
//!   for blocks.
//!
//! `/status` is reserved: an object named `status` is shadowed by it.
//!
//! Only verified bytes are sent. Before the status line, the first block of the requested
//! range is waited for (asking for it to be fetched first if it is missing); if it does not
//! come within [`HttpConfig::wait_timeout`] the answer is `504`, and `503` if the transfer
//! ended without it. The body then goes out block by block, each block waited for in turn;
//! if a later block does not come in time, the connection is closed short of the
//! `Content-Length` (the client sees a truncated body).
//!
//! Connections in flight when [`serve_http`] returns are not joined: they stop before their
//! next block, and any wait is bounded by `wait_timeout` (and cut short by the end of the
//! transfer).
//!
//! The request head is parsed by `httparse` as it arrives. A head with a byte that no
//! request head may hold where it stands is answered `400` at once; one not whole within
//! 16 KiB, or with more than 100 header fields, `431`; one not whole within 10 s, `408`.
//! Methods other than `GET` and `HEAD` get `405`.
//!
//! Modules: `parse` reads the request head, the path and the `Range` header, and knows no
//! socket; `server` runs one connection; `response` writes heads and short answers.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::published::{Ask, Published};

pub mod api;
pub mod edge;
mod parse;
mod response;
mod server;
mod switch;
#[cfg(test)]
mod tests;

use response::response_head;
use server::Conn;

/// How often the accept loop looks at the stop flag, at most.
const ACCEPT_POLL_MS: i32 = 50;

/// Settings of the HTTP endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// How long a request waits for the manifest or for one missing block.
    pub wait_timeout: Duration,
    /// Connections served at once; more get `503`.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            wait_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Serves until `stop` is set. Binds nothing itself: the caller passes a bound listener
/// (the CLI binds exactly the address the user gave, e.g. 127.0.0.1:8080).
///
/// Notices `stop` within about 50 ms. Returns an error only if the listener itself fails.
pub fn serve_http(
    listener: TcpListener,
    published: Arc<Published>,
    asks: mpsc::Sender<Ask>,
    cfg: HttpConfig,
    stop: &AtomicBool,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let closing = Arc::new(AtomicBool::new(false));
    // Connections in flight stop before their next block once this returns.
    let _closing = SetOnDrop(closing.clone());
    accept_loop(&listener, stop, |stream, peer| {
        if active.load(Ordering::Acquire) >= cfg.max_connections {
            tracing::warn!(%peer, "http: too many connections, answering 503");
            reject(stream);
            return;
        }
        // Only this thread increments, so the check above holds.
        active.fetch_add(1, Ordering::AcqRel);
        let guard = ActiveGuard(active.clone());
        let conn = Conn {
            published: published.clone(),
            asks: asks.clone(),
            cfg,
            closing: closing.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("bc-http".into())
            .spawn(move || {
                let _guard = guard;
                conn.handle(stream);
            });
        if let Err(e) = spawned {
            tracing::warn!(%peer, error = %e, "http: cannot start a connection thread");
        }
    })
}

/// Accepts connections until `stop` is set, handing each to `conn`. Returns an error only
/// if the listener itself fails.
fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    mut conn: impl FnMut(TcpStream, std::net::SocketAddr),
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(listener, ACCEPT_POLL_MS)? {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    // Accepted sockets inherit no O_NONBLOCK on Linux, but say so.
                    let _ = stream.set_nonblocking(false);
                    conn(stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EOPNOTSUPP)
                    ) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    // Out of descriptors or memory, a network error: back off and go on.
                    tracing::warn!(error = %e, "http: accept failed");
                    std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS as u64));
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Waits up to `timeout_ms` for the listener to have a connection to accept.
fn wait_readable(listener: &TcpListener, timeout_ms: i32) -> io::Result<bool> {
    let mut ready = [false];
    let timeout = Duration::from_millis(timeout_ms.max(0) as u64);
    blockcast_io::os::wait_readable(&[listener.as_raw_fd()], timeout, &mut ready);
    Ok(ready[0])
}

/// Sets a flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Counts a connection thread while it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers `503` to a connection over the limit, from the accept thread (without waiting).
fn reject(mut stream: TcpStream) {
    // Drain what already arrived, so closing does not reset the connection.
    if stream.set_nonblocking(true).is_ok() {
        let mut scratch = [0u8; 4096];
        for _ in 0..4 {
            match stream.read(&mut scratch) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let body = "too many connections\n";
    let head = response_head(
        503,
        &[
            ("Content-Type", "text/plain; charset=utf-8".into()),
            ("Retry-After", "1".into()),
        ],
        body.len() as u64,
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

/// Parses `bytes` as a request head as the server would, then its target and its `Range`
/// against an object of `size` bytes; checks what each promises. For the fuzz targets
/// (fuzz/): any input, no panic.
#[doc(hidden)]
pub fn fuzz_request(bytes: &[u8], size: u64) {
    let Ok(Some((req, used))) = parse::parse_head(bytes) else {
        return;
    };
    assert!(used <= bytes.len().min(parse::MAX_HEAD_BYTES));
    let _ = parse::request_path(&req.target);
    if let Some(range) = &req.range {
        if let parse::RangeSpec::Bytes { start, end } = parse::parse_range(range, size) {
            assert!(
                start < end && end <= size,
                "{range}: {start}..{end} of {size}"
            );
        }
    }
}
