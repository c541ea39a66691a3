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

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_proto::wire::ObjectEntry;

use crate::published::{Ask, Published, WaitError};

/// Most bytes of request line and headers accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long a client has to send its whole request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop looks at the stop flag, at most.
const ACCEPT_POLL_MS: i32 = 50;
/// Body chunk buffer (reused for the whole response).
const BODY_BUF: usize = 1 << 20;
/// Blocks after a missing one asked for together with it.
const AHEAD: u32 = 8;
/// How long a finished connection drains what the client still sends before closing.
const LINGER: Duration = Duration::from_millis(200);

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
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    let closing = Arc::new(AtomicBool::new(false));
    // Connections in flight stop before their next block once this returns.
    let _closing = SetOnDrop(closing.clone());
    while !stop.load(Ordering::Relaxed) {
        if !wait_readable(&listener, ACCEPT_POLL_MS)? {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if active.load(Ordering::Acquire) >= cfg.max_connections {
                        tracing::warn!(%peer, "http: too many connections, answering 503");
                        reject(stream);
                        continue;
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
                    let spawned =
                        std::thread::Builder::new()
                            .name("bc-http".into())
                            .spawn(move || {
                                let _guard = guard;
                                conn.handle(stream);
                            });
                    if let Err(e) = spawned {
                        tracing::warn!(%peer, error = %e, "http: cannot start a connection thread");
                    }
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
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd, and the count says one.
    let rc = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if fd.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(rc > 0)
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

/// What one connection thread needs.
struct Conn {
    published: Arc<Published>,
    asks: mpsc::Sender<Ask>,
    cfg: HttpConfig,
    closing: Arc<AtomicBool>,
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    /// The `Range` header's value; `None` if absent or given more than once.
    range: Option<String>,
}

/// Why no request was read.
#[derive(Debug, PartialEq, Eq)]
enum ReadFail {
    /// The client went away: nothing to answer.
    Closed,
    /// `408`.
    TimedOut,
    /// `431`.
    TooLarge,
    /// `400`.
    Bad,
}

impl Conn {
    fn handle(&self, mut stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(self.cfg.wait_timeout.max(READ_TIMEOUT)));
        let result = match read_head(&mut stream) {
            Ok(head) => match parse_head(&head) {
                Ok(req) => self.respond(&mut stream, &req),
                Err(()) => simple(&mut stream, false, 400, &[], "bad request\n"),
            },
            Err(ReadFail::Closed) => return,
            Err(ReadFail::TimedOut) => simple(&mut stream, false, 408, &[], "request timeout\n"),
            Err(ReadFail::TooLarge) => simple(
                &mut stream,
                false,
                431,
                &[],
                "request header fields too large\n",
            ),
            Err(ReadFail::Bad) => simple(&mut stream, false, 400, &[], "bad request\n"),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "http: connection ended early");
        }
        finish(stream);
    }

    fn respond(&self, stream: &mut TcpStream, req: &Request) -> io::Result<()> {
        let head_only = match req.method.as_str() {
            "GET" => false,
            "HEAD" => true,
            _ => {
                return simple(
                    stream,
                    false,
                    405,
                    &[("Allow", "GET, HEAD".into())],
                    "method not allowed\n",
                )
            }
        };
        let Some(path) = request_path(&req.target) else {
            return simple(stream, head_only, 400, &[], "bad request\n");
        };
        // A path that is not UTF-8 names no object.
        let Ok(path) = String::from_utf8(path) else {
            return simple(stream, head_only, 404, &[], "not found\n");
        };
        let name = path.strip_prefix('/').unwrap_or(&path);
        if name == "status" {
            let body = self.published.status_json();
            return send_text(stream, head_only, "application/json", &body);
        }
        let manifest = match self.published.manifest() {
            Some(m) => m.clone(),
            None => match self
                .published
                .wait_manifest(Instant::now() + self.cfg.wait_timeout)
            {
                Some(m) => m,
                None => {
                    return simple(
                        stream,
                        head_only,
                        503,
                        &[("Retry-After", "1".into())],
                        "manifest not yet known\n",
                    )
                }
            },
        };
        if name.is_empty() {
            let mut body = String::new();
            for o in &manifest.objects {
                body += &format!("{}\t{}\n", o.name, o.size);
            }
            return send_text(stream, head_only, "text/plain; charset=utf-8", &body);
        }
        let Some((index, entry)) = manifest
            .objects
            .iter()
            .enumerate()
            .find(|(_, o)| o.name == name)
        else {
            return simple(stream, head_only, 404, &[], "not found\n");
        };
        let Ok(object) = u32::try_from(index) else {
            return simple(stream, head_only, 404, &[], "not found\n");
        };
        let range = if head_only {
            None
        } else {
            req.range.as_deref()
        };
        self.send_object(
            stream,
            head_only,
            object,
            entry,
            manifest.block_size(),
            range,
        )
    }

    fn send_object(
        &self,
        stream: &mut TcpStream,
        head_only: bool,
        object: u32,
        entry: &ObjectEntry,
        block_size: u64,
        range: Option<&str>,
    ) -> io::Result<()> {
        let size = entry.size;
        let (status, start, end) = match range.map(|r| parse_range(r, size)) {
            None | Some(RangeSpec::Ignore) => (200, 0, size),
            Some(RangeSpec::Bytes { start, end }) => (206, start, end),
            Some(RangeSpec::Unsatisfiable) => {
                return simple(
                    stream,
                    head_only,
                    416,
                    &[("Content-Range", format!("bytes */{size}"))],
                    "",
                )
            }
        };
        let mut headers = vec![
            ("Content-Type", content_type(&entry.name).to_string()),
            ("Accept-Ranges", "bytes".to_string()),
        ];
        if status == 206 {
            headers.push(("Content-Range", format!("bytes {start}-{}/{size}", end - 1)));
        }
        if head_only || start >= end {
            return write_all_parts(stream, &response_head(status, &headers, end - start), b"");
        }
        if block_size == 0 {
            return simple(stream, false, 500, &[], "bad block geometry\n");
        }
        let Ok(first) = u32::try_from(start / block_size) else {
            return simple(stream, false, 500, &[], "block index out of range\n");
        };
        let deadline = Instant::now() + self.cfg.wait_timeout;
        match self
            .published
            .wait_block(object, first, AHEAD, deadline, &self.asks)
        {
            Ok(()) => {}
            Err(WaitError::TimedOut) => {
                return simple(stream, false, 504, &[], "block not received in time\n")
            }
            Err(WaitError::Ended) => {
                return simple(
                    stream,
                    false,
                    503,
                    &[],
                    "transfer ended without this block\n",
                )
            }
            Err(WaitError::OutOfRange) => {
                return simple(stream, false, 500, &[], "block out of range\n")
            }
        }
        stream.write_all(response_head(status, &headers, end - start).as_bytes())?;
        self.send_body(stream, object, &entry.name, block_size, start, end)
    }

    /// Sends bytes `start..end` of `object`, block by block, each once it is verified.
    fn send_body(
        &self,
        stream: &mut TcpStream,
        object: u32,
        name: &str,
        block_size: u64,
        start: u64,
        end: u64,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; (end - start).min(BODY_BUF as u64) as usize];
        let mut pos = start;
        while pos < end {
            if self.closing.load(Ordering::Acquire) {
                return Err(io::Error::other("server stopped"));
            }
            let block = pos / block_size;
            let Ok(block32) = u32::try_from(block) else {
                return Err(io::Error::other("block index out of range"));
            };
            let deadline = Instant::now() + self.cfg.wait_timeout;
            if let Err(e) = self
                .published
                .wait_block(object, block32, AHEAD, deadline, &self.asks)
            {
                tracing::warn!(
                    object = name,
                    block,
                    reason = ?e,
                    "http: block did not come, closing the response short"
                );
                return Err(io::Error::other("block did not come"));
            }
            let block_end = block.saturating_add(1).saturating_mul(block_size).min(end);
            while pos < block_end {
                let n = (block_end - pos).min(buf.len() as u64) as usize;
                let got = self.published.read_at(object, pos, &mut buf[..n])?;
                if got < n {
                    tracing::warn!(
                        object = name,
                        offset = pos + got as u64,
                        "http: output file shorter than the object, closing the response short"
                    );
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                stream.write_all(&buf[..n])?;
                pos += n as u64;
            }
        }
        stream.flush()
    }
}

/// Reads the request line and headers (up to the empty line), within the limits.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, ReadFail> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(&buf[..len], scanned) {
            buf.truncate(end);
            return Ok(buf);
        }
        scanned = len.saturating_sub(2);
        if len == buf.len() {
            return Err(ReadFail::TooLarge);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadFail::TimedOut);
        }
        if stream.set_read_timeout(Some(deadline - now)).is_err() {
            return Err(ReadFail::Closed);
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) if len == 0 => return Err(ReadFail::Closed),
            // A request cut short: answer it as bad (the client may still read).
            Ok(0) => return Err(ReadFail::Bad),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadFail::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadFail::Closed),
        }
    }
}

/// Where the request head ends (just past its empty line), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Parses the request line and the headers this endpoint uses.
fn parse_head(head: &[u8]) -> Result<Request, ()> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().ok_or(())?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(());
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_alphabetic())
        || target.is_empty()
        || !version.starts_with("HTTP/1.")
    {
        return Err(());
    }
    let mut range = None;
    let mut ranges = 0;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(());
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(());
        }
        if name.eq_ignore_ascii_case("range") {
            ranges += 1;
            range = Some(value.trim().to_string());
        }
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        range: if ranges == 1 { range } else { None },
    })
}

/// The percent-decoded path of a request target (origin or absolute form), without its
/// query; `None` if the target is not one or has a bad escape.
fn request_path(target: &str) -> Option<Vec<u8>> {
    let path = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return None;
        };
        rest.find('/').map_or("/", |i| &rest[i..])
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    percent_decode(path)
}

/// Decodes `%XX` escapes; `None` on a bad escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What a `Range` header asks of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Malformed, several ranges, or another unit: send the whole object.
    Ignore,
    /// Bytes `start..end` (end exclusive, non-empty, within the object).
    Bytes { start: u64, end: u64 },
    /// `416`.
    Unsatisfiable,
}

/// Parses a `Range` header value against an object of `size` bytes.
fn parse_range(value: &str, size: u64) -> RangeSpec {
    let value = value.trim();
    let Some(unit) = value.get(..6) else {
        return RangeSpec::Ignore;
    };
    if !unit.eq_ignore_ascii_case("bytes=") {
        return RangeSpec::Ignore;
    }
    let specs: Vec<&str> = value[6..]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let [spec] = specs[..] else {
        return RangeSpec::Ignore;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return RangeSpec::Ignore;
    };
    if first.is_empty() {
        // bytes=-n: the last n bytes.
        let Some(n) = parse_digits(last) else {
            return RangeSpec::Ignore;
        };
        if n == 0 || size == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Bytes {
            start: size - n.min(size),
            end: size,
        };
    }
    let Some(start) = parse_digits(first) else {
        return RangeSpec::Ignore;
    };
    let last = if last.is_empty() {
        None
    } else {
        match parse_digits(last) {
            Some(l) if l >= start => Some(l),
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= size {
        return RangeSpec::Unsatisfiable;
    }
    let end = last.map_or(size, |l| l.saturating_add(1).min(size));
    RangeSpec::Bytes { start, end }
}

/// ASCII digits as a number, saturating at `u64::MAX`; `None` if not all digits.
fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// The media type of an object, from its name's extension.
fn content_type(name: &str) -> &'static str {
    let file = name.rsplit('/').next().unwrap_or(name);
    let ext = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "ts" | "m2ts" => "video/mp2t",
        "mp4" | "m4v" => "video/mp4",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// A status line and headers, with `Content-Length` and `Connection: close`.
fn response_head(status: u16, headers: &[(&str, String)], content_length: u64) -> String {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += &format!("Content-Length: {content_length}\r\nConnection: close\r\n\r\n");
    out
}

fn write_all_parts(stream: &mut TcpStream, head: &str, body: &[u8]) -> io::Result<()> {
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// A short text answer (its body left out for `HEAD`).
fn simple(
    stream: &mut TcpStream,
    head_only: bool,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
) -> io::Result<()> {
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8".to_string())];
    headers.extend(extra.iter().cloned());
    let head = response_head(status, &headers, body.len() as u64);
    let body = if head_only { "" } else { body };
    write_all_parts(stream, &head, body.as_bytes())
}

/// A `200` with a generated body that is not to be cached.
fn send_text(
    stream: &mut TcpStream,
    head_only: bool,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let headers = [
        ("Content-Type", content_type.to_string()),
        ("Cache-Control", "no-store".to_string()),
    ];
    let head = response_head(200, &headers, body.len() as u64);
    let body = if head_only { "" } else { body };
    write_all_parts(stream, &head, body.as_bytes())
}

/// Ends a connection: half-closes it, then briefly drains what the client still sends, so
/// the close does not reset the connection before the client has read the answer.
fn finish(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut scratch) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockcast_proto::wire::Manifest;
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU64;
    use std::thread::JoinHandle;

    /// 16-byte units, 4 per block: 64-byte blocks.
    const BLOCK: u64 = 64;
    const LIMIT: Duration = Duration::from_secs(10);

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Objects: 0 "a.txt" (1000 bytes, 16 blocks), 1 "dir/video file.ts" (300 bytes),
    /// 2 "empty.bin" (0 bytes).
    fn objects() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("a.txt", content(1000, 1)),
            ("dir/video file.ts", content(300, 7)),
            ("empty.bin", Vec::new()),
        ]
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "blockcast-http-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes the objects' files and publishes the manifest (no blocks yet).
    fn publish_files(dir: &TempDir, published: &Published) {
        let objs = objects();
        let manifest = Manifest {
            unit_size: 16,
            units_per_block: 4,
            objects: objs
                .iter()
                .map(|(name, data)| ObjectEntry::from_content(*name, data, BLOCK as usize))
                .collect(),
        };
        let paths: Vec<PathBuf> = objs
            .iter()
            .enumerate()
            .map(|(i, (_, data))| {
                let p = dir.0.join(format!("obj{i}"));
                std::fs::write(&p, data).unwrap();
                p
            })
            .collect();
        published.publish_manifest(&manifest, paths);
    }

    /// Publishes every block except those in `missing` (object, block).
    fn publish_all_but(published: &Published, missing: &[(u32, u32)]) {
        let m = published.manifest().unwrap().clone();
        for (o, entry) in m.objects.iter().enumerate() {
            for b in 0..entry.block_hashes.len() as u32 {
                if !missing.contains(&(o as u32, b)) {
                    published.publish_block(o as u32, b);
                }
            }
        }
        published.notify();
    }

    struct Server {
        addr: SocketAddr,
        published: Arc<Published>,
        asks: mpsc::Receiver<Ask>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<io::Result<()>>>,
        _dir: TempDir,
    }

    impl Server {
        /// A server over the test objects, all blocks published but `missing`.
        fn new(missing: &[(u32, u32)], cfg: HttpConfig) -> Self {
            let dir = TempDir::new();
            let published = Arc::new(Published::default());
            publish_files(&dir, &published);
            publish_all_but(&published, missing);
            Self::start(published, cfg, dir)
        }

        fn start(published: Arc<Published>, cfg: HttpConfig, dir: TempDir) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let published = published.clone();
                let stop = stop.clone();
                std::thread::spawn(move || serve_http(listener, published, tx, cfg, &stop))
            };
            Server {
                addr,
                published,
                asks: rx,
                stop,
                thread: Some(thread),
                _dir: dir,
            }
        }

        fn get(&self, path: &str, extra: &str) -> Response {
            request(
                self.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"),
            )
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let started = Instant::now();
                let r = t.join();
                if !std::thread::panicking() {
                    assert!(r.unwrap().is_ok());
                    assert!(started.elapsed() < Duration::from_secs(1));
                }
            }
        }
    }

    fn cfg() -> HttpConfig {
        HttpConfig {
            wait_timeout: LIMIT,
            max_connections: 64,
        }
    }

    fn short_cfg() -> HttpConfig {
        HttpConfig {
            wait_timeout: Duration::from_millis(200),
            max_connections: 64,
        }
    }

    #[derive(Debug)]
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn content_length(&self) -> u64 {
            self.header("content-length").unwrap().parse().unwrap()
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LIMIT)).unwrap();
        s.set_write_timeout(Some(LIMIT)).unwrap();
        s
    }

    fn request(addr: SocketAddr, raw: &str) -> Response {
        let mut s = connect(addr);
        s.write_all(raw.as_bytes()).unwrap();
        read_response(&mut s)
    }

    /// Reads a whole response, up to the server's close.
    fn read_response(s: &mut TcpStream) -> Response {
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let end = head_end(&all, 0).expect("a response head");
        let head = std::str::from_utf8(&all[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        Response {
            status,
            headers,
            body: all[end..].to_vec(),
        }
    }

    #[test]
    fn http_whole_object() {
        let server = Server::new(&[], cfg());
        let r = server.get("/a.txt", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, objects()[0].1);
        assert_eq!(r.content_length(), 1000);
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(server.asks.try_recv().is_err());
    }

    #[test]
    fn http_percent_decoded_name_and_type() {
        let server = Server::new(&[], cfg());
        let r = server.get("/dir/video%20file.ts?x=1", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("video/mp2t"));
        assert_eq!(r.body, objects()[1].1);
        // Absolute form.
        let r = server.get(&format!("http://{}/dir%2Fvideo%20file.ts", server.addr), "");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, objects()[1].1);
    }

    #[test]
    fn http_range_206() {
        let server = Server::new(&[], cfg());
        let data = &objects()[0].1;
        let r = server.get("/a.txt", "Range: bytes=100-299\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 100-299/1000"));
        assert_eq!(r.content_length(), 200);
        assert_eq!(r.body, data[100..300]);
        // Open-ended, and a last position past the end (clamped).
        let r = server.get("/a.txt", "Range: bytes=990-\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 990-999/1000"));
        assert_eq!(r.body, data[990..]);
        let r = server.get("/a.txt", "range: BYTES=5-99999999999999999999999\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 5-999/1000"));
        assert_eq!(r.body, data[5..]);
        // One byte, within one block.
        let r = server.get("/a.txt", "Range: bytes=64-64\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.body, data[64..65]);
    }

    #[test]
    fn http_suffix_range() {
        let server = Server::new(&[], cfg());
        let data = &objects()[0].1;
        let r = server.get("/a.txt", "Range: bytes=-100\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 900-999/1000"));
        assert_eq!(r.body, data[900..]);
        let r = server.get("/a.txt", "Range: bytes=-5000\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 0-999/1000"));
        assert_eq!(r.body, *data);
    }

    #[test]
    fn http_unsatisfiable_416() {
        let server = Server::new(&[], cfg());
        for (path, range, size) in [
            ("/a.txt", "bytes=1000-", 1000),
            ("/a.txt", "bytes=5000-6000", 1000),
            ("/a.txt", "bytes=-0", 1000),
            ("/empty.bin", "bytes=0-", 0),
            ("/empty.bin", "bytes=-10", 0),
        ] {
            let r = server.get(path, &format!("Range: {range}\r\n"));
            assert_eq!(r.status, 416, "{path} {range}");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes */{size}").as_str())
            );
            assert!(r.body.is_empty());
        }
    }

    #[test]
    fn http_ignored_ranges_200() {
        let server = Server::new(&[], cfg());
        for extra in [
            "Range: bytes=abc\r\n",
            "Range: bytes=10-5\r\n",
            "Range: items=0-5\r\n",
            "Range: bytes=\r\n",
            "Range: bytes=0-1, 5-6\r\n",
            "Range: bytes=0-1\r\nRange: bytes=2-3\r\n",
        ] {
            let r = server.get("/a.txt", extra);
            assert_eq!(r.status, 200, "{extra}");
            assert_eq!(r.body, objects()[0].1);
        }
    }

    #[test]
    fn http_empty_object() {
        let server = Server::new(&[], cfg());
        let r = server.get("/empty.bin", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), 0);
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert!(r.body.is_empty());
    }

    #[test]
    fn http_head() {
        // HEAD neither waits for blocks nor asks for them.
        let server = Server::new(&[(0, 0)], cfg());
        let r = request(server.addr, "HEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), 1000);
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert!(r.body.is_empty());
        // Range is ignored for HEAD.
        let r = request(
            server.addr,
            "HEAD /a.txt HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), 1000);
        assert!(r.body.is_empty());
        assert!(server.asks.try_recv().is_err());
        let r = request(server.addr, "HEAD /nope HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 404);
        assert!(r.body.is_empty());
    }

    #[test]
    fn http_not_found_and_bad_requests() {
        let server = Server::new(&[], cfg());
        assert_eq!(server.get("/nope.txt", "").status, 404);
        assert_eq!(server.get("/dir", "").status, 404);
        assert_eq!(server.get("/a.txt/", "").status, 404);
        assert_eq!(server.get("/%ff%fe", "").status, 404);
        assert_eq!(server.get("/a%2.txt", "").status, 400);
        assert_eq!(server.get("a.txt", "").status, 400);
        assert_eq!(request(server.addr, "garbage\r\n\r\n").status, 400);
        assert_eq!(
            request(server.addr, "GET / HTTP/1.1\r\nno colon\r\n\r\n").status,
            400
        );
        assert_eq!(request(server.addr, "GET / SPDY/3\r\n\r\n").status, 400);
        // Request cut short by the client.
        let mut s = connect(server.addr);
        s.write_all(b"GET /a.txt HTTP/1.1\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_response(&mut s).status, 400);
    }

    #[test]
    fn http_headers_too_large() {
        let server = Server::new(&[], cfg());
        let mut s = connect(server.addr);
        let big = format!("GET /a.txt HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(20_000));
        // The server may stop reading (and answer) before all of it is written.
        let _ = s.write_all(big.as_bytes());
        assert_eq!(read_response(&mut s).status, 431);
    }

    #[test]
    fn http_method_not_allowed() {
        let server = Server::new(&[], cfg());
        let r = request(
            server.addr,
            "POST /a.txt HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        );
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        let r = request(server.addr, "DELETE /status HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 405);
    }

    #[test]
    fn http_status_json() {
        let server = Server::new(&[(0, 3)], cfg());
        let r = server.get("/status", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.contains("\"blocks_verified\":15"), "{body}");
        assert!(body.contains("\"verified_prefix_bytes\":192"), "{body}");
        assert!(body.contains("\"name\":\"dir/video file.ts\""), "{body}");
    }

    #[test]
    fn http_listing() {
        let server = Server::new(&[], cfg());
        let r = server.get("/", "");
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "a.txt\t1000\ndir/video file.ts\t300\nempty.bin\t0\n"
        );
    }

    #[test]
    fn http_waits_for_missing_block_and_asks() {
        // Block 5 of a.txt (bytes 320..384) is missing.
        let server = Server::new(&[(0, 5)], cfg());
        let addr = server.addr;
        let client = std::thread::spawn(move || {
            request(addr, "GET /a.txt HTTP/1.1\r\nRange: bytes=300-399\r\n\r\n")
        });
        // The first block of the range (4) is there: the server sends the head, then
        // waits for block 5 and asks for it.
        let ask = server.asks.recv_timeout(LIMIT).expect("an ask");
        assert_eq!(
            ask,
            Ask {
                object: 0,
                block: 5,
                count: AHEAD + 1
            }
        );
        assert!(!client.is_finished());
        server.published.publish_block(0, 5);
        server.published.notify();
        let r = client.join().unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 300-399/1000"));
        assert_eq!(r.body, objects()[0].1[300..400]);
    }

    #[test]
    fn http_waits_for_first_block_before_the_head() {
        // The last block of a.txt (block 15, bytes 960..1000) is missing.
        let server = Server::new(&[(0, 15)], cfg());
        let addr = server.addr;
        let client = std::thread::spawn(move || {
            request(addr, "GET /a.txt HTTP/1.1\r\nRange: bytes=-10\r\n\r\n")
        });
        let ask = server.asks.recv_timeout(LIMIT).expect("an ask");
        // Only one block is left from 15 on.
        assert_eq!(
            ask,
            Ask {
                object: 0,
                block: 15,
                count: 1
            }
        );
        server.published.publish_block(0, 15);
        server.published.notify();
        let r = client.join().unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, objects()[0].1[990..]);
    }

    #[test]
    fn http_first_block_timeout_504() {
        let server = Server::new(&[(0, 0)], short_cfg());
        let r = server.get("/a.txt", "");
        assert_eq!(r.status, 504);
        assert_eq!(
            server.asks.try_recv().ok().map(|a| (a.object, a.block)),
            Some((0, 0))
        );
        // Other objects still answer.
        assert_eq!(server.get("/dir/video%20file.ts", "").status, 200);
    }

    #[test]
    fn http_ended_without_block_503() {
        let server = Server::new(&[(1, 2)], cfg());
        server.published.end();
        let r = server.get("/dir/video%20file.ts", "Range: bytes=130-\r\n");
        assert_eq!(r.status, 503);
        // Bytes that are there are still served after the end.
        let r = server.get("/dir/video%20file.ts", "Range: bytes=0-127\r\n");
        assert_eq!(r.status, 206);
        assert_eq!(r.body, objects()[1].1[..128]);
    }

    #[test]
    fn http_later_block_timeout_truncates() {
        let server = Server::new(&[(0, 2)], short_cfg());
        let r = server.get("/a.txt", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), 1000);
        // Blocks 0 and 1 went out, then the connection closed.
        assert_eq!(r.body, objects()[0].1[..128]);
    }

    #[test]
    fn http_manifest_not_known_503() {
        let published = Arc::new(Published::default());
        let server = Server::start(published, short_cfg(), TempDir::new());
        let r = server.get("/a.txt", "");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        // The status answers at once.
        let r = server.get("/status", "");
        assert_eq!(r.status, 200);
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("\"manifest\":false"));
    }

    #[test]
    fn http_waits_for_the_manifest() {
        let dir = TempDir::new();
        let published = Arc::new(Published::default());
        let server = Server::start(published.clone(), cfg(), dir);
        let addr = server.addr;
        let client = std::thread::spawn(move || request(addr, "GET /a.txt HTTP/1.1\r\n\r\n"));
        publish_files(&server._dir, &published);
        publish_all_but(&published, &[]);
        let r = client.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, objects()[0].1);
    }

    #[test]
    fn http_connection_limit_503() {
        let server = Server::new(
            &[],
            HttpConfig {
                wait_timeout: LIMIT,
                max_connections: 1,
            },
        );
        // The first connection holds the only slot while it has not sent its request.
        let mut first = connect(server.addr);
        let mut second = connect(server.addr);
        let r = read_response(&mut second);
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        first.write_all(b"GET /a.txt HTTP/1.1\r\n\r\n").unwrap();
        let r = read_response(&mut first);
        assert_eq!(r.status, 200);
        // The slot is free again once the first thread is done.
        let deadline = Instant::now() + LIMIT;
        loop {
            let r = server.get("/a.txt", "");
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503);
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn http_stops_promptly() {
        let server = Server::new(&[], cfg());
        let started = Instant::now();
        drop(server); // Drop asserts serve_http returned Ok within a second.
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn http_blocks_larger_than_the_buffer() {
        // 2 MiB blocks, a 3 MiB + 5 object: reads go out in 1 MiB pieces within a block.
        let data = content(3 * BODY_BUF + 5, 3);
        let block = 64 * 32768;
        let manifest = Manifest {
            unit_size: 64,
            units_per_block: 32768,
            objects: vec![ObjectEntry::from_content("big.bin", &data, block)],
        };
        let dir = TempDir::new();
        let path = dir.0.join("big");
        std::fs::write(&path, &data).unwrap();
        let published = Arc::new(Published::default());
        published.publish_manifest(&manifest, vec![path]);
        published.publish_block(0, 0);
        published.publish_block(0, 1);
        published.notify();
        let server = Server::start(published, cfg(), dir);
        let r = server.get("/big.bin", "");
        assert_eq!(r.status, 200);
        assert!(r.body == data);
        let (a, b) = (BODY_BUF - 3, 2 * BODY_BUF + 17);
        let r = server.get("/big.bin", &format!("Range: bytes={a}-{b}\r\n"));
        assert_eq!(r.status, 206);
        assert!(r.body == data[a..=b]);
    }

    #[test]
    fn http_parse_range_cases() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Bytes { start: 0, end: 10 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Bytes {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse_range("bytes=-1", 100),
            Bytes {
                start: 99,
                end: 100
            }
        );
        assert_eq!(parse_range("bytes= 5-6 ,", 100), Bytes { start: 5, end: 7 });
        assert_eq!(
            parse_range("bytes=99-200", 100),
            Bytes {
                start: 99,
                end: 100
            }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(
            parse_range("bytes=18446744073709551616-", 100),
            Unsatisfiable
        );
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-",
            "bytes=1-a",
            "bytes=+1-2",
            "bytes=2-1",
            "bytes=0-1,2-3",
            "bits=0-1",
            "bytes=1",
            "bytes=--1",
            "bytes=1-2-3",
            "bytes=é-",
        ] {
            assert_eq!(parse_range(bad, 100), Ignore, "{bad:?}");
        }
    }

    #[test]
    fn http_helpers() {
        assert_eq!(percent_decode("/a%20b%2Fc").unwrap(), b"/a b/c");
        assert_eq!(percent_decode("/%e2%82%AC").unwrap(), "/€".as_bytes());
        assert_eq!(percent_decode("/a%2"), None);
        assert_eq!(percent_decode("/a%zz"), None);
        assert_eq!(request_path("/x?y#z").unwrap(), b"/x");
        assert_eq!(request_path("HTTP://h:1").unwrap(), b"/");
        assert_eq!(request_path("*"), None);
        assert_eq!(content_type("x/Movie.MKV"), "video/x-matroska");
        assert_eq!(content_type("a.m2ts"), "video/mp2t");
        assert_eq!(content_type("a.iso"), "application/octet-stream");
        assert_eq!(content_type(".txt"), "application/octet-stream");
        assert_eq!(content_type("dir.mp4/noext"), "application/octet-stream");
        assert_eq!(content_type("song.m4a"), "audio/mp4");
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }
}
