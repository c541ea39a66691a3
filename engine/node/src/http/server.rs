//! One connection: read the request head, answer it, send the body block by block as
//! blocks are verified, then close.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_proto::wire::ObjectEntry;

use super::parse::{
    parse_head, parse_range, request_path, HeadError, RangeSpec, Request, MAX_HEAD_BYTES,
};
use super::response::{content_type, response_head, send_text, simple, write_all_parts};
use super::HttpConfig;
use crate::published::{Ask, Published, WaitError};

/// How long a client has to send its whole request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Body chunk buffer (reused for the whole response).
pub(super) const BODY_BUF: usize = 1 << 20;
/// Blocks after a missing one asked for together with it.
pub(super) const AHEAD: u32 = 8;
/// How long a finished connection drains what the client still sends before closing.
const LINGER: Duration = Duration::from_millis(200);

/// What one connection thread needs.
pub(super) struct Conn {
    pub(super) published: Arc<Published>,
    pub(super) asks: mpsc::Sender<Ask>,
    pub(super) cfg: HttpConfig,
    pub(super) closing: Arc<AtomicBool>,
}

/// Why no request was read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadFail {
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
    /// Serves the one request of a connection, then closes it.
    pub(super) fn handle(&self, mut stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(self.cfg.wait_timeout.max(READ_TIMEOUT)));
        let result = match read_request(&mut stream) {
            Ok(req) => self.respond(&mut stream, &req),
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
            // One line per object: a name's control characters (a newline) are escaped.
            for o in &manifest.objects {
                body += &format!("{}\t{}\n", crate::names::escaped(&o.name), o.size);
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

/// Reads until the request head is whole (up to its empty line), within the limits, and
/// parses it.
pub(super) fn read_request(stream: &mut TcpStream) -> Result<Request, ReadFail> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut len = 0;
    loop {
        match parse_head(&buf[..len]) {
            Ok(Some((request, _))) => return Ok(request),
            Ok(None) => {}
            Err(HeadError::Bad) => return Err(ReadFail::Bad),
            Err(HeadError::TooLarge) => return Err(ReadFail::TooLarge),
        }
        // parse_head answers a full buffer with a head or an error; this only keeps the
        // read below from being given no room.
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

/// Ends a connection: half-closes it, then briefly drains what the client still sends, so
/// the close does not reset the connection before the client has read the answer.
pub(super) fn finish(mut stream: TcpStream) {
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
