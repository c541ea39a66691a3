//! The edge's client side: HTTP/1.1 with keep-alive, objects at `/NAME` from the edge's
//! tiers ([`crate::edge`]), the critical rendition at `/NAME?rendition=critical`, either one
//! by the client's measured delivery rate at `/NAME?rendition=auto` ([`crate::edge::auto`];
//! the `X-Rendition` header says which), the edge's state at `/status`.
//!
//! One thread per connection (at most [`crate::edge::EdgeConfig::max_connections`]; past
//! that `503`). A connection answers requests one after the other while the client keeps it
//! open (HTTP/1.1 unless `Connection: close`; HTTP/1.0 with `Connection: keep-alive`); an
//! error answer (`4xx`, `5xx`) closes it. The request head is read and parsed as by the
//! receiver's endpoint (`super::parse`); `Range` is handled the same way (one range, `206`;
//! `416` when unsatisfiable; other forms ignored, `200`). `HEAD` answers with the length and
//! never sends a body (for an object the edge does not know yet, it starts the fill that
//! learns the length: a player's `HEAD` is followed by its `GET`). Each object's `ETag` is its content's BLAKE3 (the critical
//! rendition's, its own content id); `If-Range` with that tag keeps the `Range`, with anything
//! else (another tag, a date) gets the whole object. Not handled yet: conditional requests
//! (`If-None-Match`, `If-Modified-Since`). An `auto` request from byte 0 without a `Range`
//! may switch to the critical rendition in the middle of its response (`switch.rs`).
//!
//! Before the status line the object's description and the first block of the range are
//! obtained (waiting for the fill if need be): an object the origin does not have is `404`,
//! a fill that fails is `502`, one that does not deliver in time `504`; a critical
//! rendition that cannot be made is `415` (not a transport stream) or `422`. After the
//! status line, a block that cannot be had closes the connection short of its
//! `Content-Length`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_edge::ts::RenditionError;

use super::parse::{
    parse_head, parse_range, request_path, HeadError, RangeSpec, Request, MAX_HEAD_BYTES,
};
use super::response::{content_type, response_head_close_delimited, response_head_kept};
use super::server::finish;
use crate::edge::{auto, AutoChoice, Edge, EdgeError, Meta, Served};

/// How long a connection waits for the first byte of a request head (the idle time of a
/// kept-alive connection too), and for the rest of it.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves clients until `stop` is set (noticed within about 50 ms).
pub fn serve_edge(listener: TcpListener, edge: Arc<Edge>, stop: &AtomicBool) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let max = edge.config().max_connections.max(1);
    super::accept_loop(&listener, stop, |stream, peer| {
        if active.load(Ordering::Acquire) >= max {
            tracing::warn!(%peer, "edge: too many connections, answering 503");
            super::reject(stream);
            return;
        }
        // Only the accept thread increments, so the check above holds.
        active.fetch_add(1, Ordering::AcqRel);
        let guard = super::ActiveGuard(active.clone());
        let edge = edge.clone();
        let spawned = std::thread::Builder::new()
            .name("bc-edge-http".into())
            .spawn(move || {
                let _guard = guard;
                connection(&edge, stream, peer);
            });
        if let Err(e) = spawned {
            tracing::warn!(%peer, error = %e, "edge: cannot start a connection thread");
        }
    })
}

/// Why a connection stops reading requests.
enum ReadEnd {
    /// The client closed or went idle: nothing to answer.
    Closed,
    /// Answer with this status, then close.
    Answer(u16, &'static str),
}

/// Reads the next request head from `stream`, `buf` holding what was read past the last one.
fn next_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Request, ReadEnd> {
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        match parse_head(buf) {
            Ok(Some((request, used))) => {
                buf.drain(..used);
                return Ok(request);
            }
            Ok(None) => {}
            Err(HeadError::Bad) => return Err(ReadEnd::Answer(400, "bad request\n")),
            Err(HeadError::TooLarge) => {
                return Err(ReadEnd::Answer(431, "request header fields too large\n"))
            }
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(ReadEnd::Answer(431, "request header fields too large\n"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(if buf.is_empty() {
                ReadEnd::Closed
            } else {
                ReadEnd::Answer(408, "request timeout\n")
            });
        }
        if stream.set_read_timeout(Some(deadline - now)).is_err() {
            return Err(ReadEnd::Closed);
        }
        let mut chunk = [0u8; 4096];
        let room = (MAX_HEAD_BYTES - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) if buf.is_empty() => return Err(ReadEnd::Closed),
            Ok(0) => return Err(ReadEnd::Answer(400, "bad request\n")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(if buf.is_empty() {
                    ReadEnd::Closed
                } else {
                    ReadEnd::Answer(408, "request timeout\n")
                })
            }
            Err(_) => return Err(ReadEnd::Closed),
        }
    }
}

/// One connection: requests until the client closes, asks to close, or an answer closes it.
fn connection(edge: &Arc<Edge>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(edge.config().wait_timeout.max(READ_TIMEOUT)));
    let mut buf = Vec::new();
    loop {
        let req = match next_request(&mut stream, &mut buf) {
            Ok(r) => r,
            Err(ReadEnd::Closed) => break,
            Err(ReadEnd::Answer(status, body)) => {
                let _ = short(&mut stream, false, status, &[], body);
                break;
            }
        };
        edge.counters.requests.fetch_add(1, Ordering::Relaxed);
        match respond(edge, &mut stream, peer, &req) {
            Ok(true) if req.keep_alive && !edge.is_stopping() => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "edge: connection ended early");
                break;
            }
        }
    }
    finish(stream);
}

/// A short answer that closes the connection.
fn short(
    stream: &mut TcpStream,
    head_only: bool,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
) -> io::Result<bool> {
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8".to_string())];
    headers.extend(extra.iter().cloned());
    let head = response_head_kept(status, &headers, body.len() as u64, false);
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    Ok(false)
}

/// A generated document (kept alive).
fn document(
    stream: &mut TcpStream,
    head_only: bool,
    content_type: &str,
    body: &str,
    keep: bool,
) -> io::Result<bool> {
    let headers = [
        ("Content-Type", content_type.to_string()),
        ("Cache-Control", "no-store".to_string()),
    ];
    let head = response_head_kept(200, &headers, body.len() as u64, keep);
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    Ok(true)
}

/// The rendition a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Full,
    Critical,
    /// Chosen by the client's measured delivery rate ([`crate::edge::auto`]).
    Auto,
}

/// Which rendition a query asks for; `None` for a query this endpoint does not know.
fn rendition(query: &str) -> Option<Asked> {
    let mut asked = Asked::Full;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("rendition", "critical")) => asked = Asked::Critical,
            Some(("rendition", "full")) => asked = Asked::Full,
            Some(("rendition", "auto")) => asked = Asked::Auto,
            Some(("rendition", _)) => return None,
            // Other parameters (a player's cache buster) are ignored.
            _ => {}
        }
    }
    Some(asked)
}

/// Whether a request's `Range` (if any) starts at byte 0: only such a response chooses a
/// rendition afresh under `auto`.
fn starts_at_zero(range: Option<&str>) -> bool {
    range.is_none_or(|r| {
        r.trim()
            .strip_prefix("bytes=")
            .is_some_and(|r| r.trim_start().starts_with("0-"))
    })
}

/// The rendition `auto` gives this request (true: critical) and what it compared.
fn choose_auto(
    edge: &Arc<Edge>,
    peer: SocketAddr,
    name: &str,
    range: Option<&str>,
) -> Result<(bool, AutoChoice), EdgeError> {
    let ip = peer.ip();
    let measured = edge.rates.rate(ip);
    let mut choice = AutoChoice {
        measured_bytes_per_sec: measured,
        full_bytes_per_sec: None,
        kept: false,
    };
    if !starts_at_zero(range) {
        // A seek: the bytes must come from the rendition the client is reading.
        choice.kept = true;
        return Ok((edge.rates.chosen(ip, name).unwrap_or(false), choice));
    }
    let critical = match measured {
        // No sample yet: the full rendition (the response measures the client).
        None => false,
        Some(rate) => {
            let full = edge.full_bitrate(name)?;
            choice.full_bytes_per_sec = full;
            if full.is_some_and(|full| rate < full) {
                match edge.critical_made(name) {
                    Ok(_) => true,
                    // No critical rendition of this object: the full one, whatever the rate.
                    Err(EdgeError::Rendition(_)) => false,
                    Err(e) => return Err(e),
                }
            } else {
                false
            }
        }
    };
    edge.rates.choose(ip, name, critical);
    Ok((critical, choice))
}

/// Answers one request. `Ok(true)`: the connection may take another.
fn respond(
    edge: &Arc<Edge>,
    stream: &mut TcpStream,
    peer: SocketAddr,
    req: &Request,
) -> io::Result<bool> {
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return short(
                stream,
                false,
                405,
                &[("Allow", "GET, HEAD".into())],
                "method not allowed\n",
            )
        }
    };
    let keep = req.keep_alive;
    let query = req
        .target
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or(""));
    let Some(path) = request_path(&req.target) else {
        return short(stream, head_only, 400, &[], "bad request\n");
    };
    let Ok(path) = String::from_utf8(path) else {
        return short(stream, head_only, 404, &[], "not found\n");
    };
    let name = path.strip_prefix('/').unwrap_or(&path);
    if let Some(done) = listing(edge, stream, name, head_only, keep) {
        return done;
    }
    if !blockcast_proto::wire::valid_name(name) {
        return short(stream, head_only, 404, &[], "not found\n");
    }
    let Some(asked) = rendition(query) else {
        return short(
            stream,
            head_only,
            400,
            &[],
            "unknown rendition (rendition=full, critical or auto)\n",
        );
    };
    let (critical, auto) = match asked {
        Asked::Full => (false, None),
        Asked::Critical => (true, None),
        Asked::Auto => match choose_auto(edge, peer, name, req.range.as_deref()) {
            Ok((critical, choice)) => (critical, Some(choice)),
            Err(e) => return refuse(stream, head_only, &e),
        },
    };
    // The critical rendition as it was made (or taken from the origin), or the full one.
    let made = if critical {
        edge.critical_made(name).map(Some)
    } else {
        Ok(None)
    };
    let (meta, made) = match made.and_then(|m| match m {
        Some(m) => Ok((m.meta.clone(), Some(m))),
        None => edge.meta(name).map(|meta| (meta, None)),
    }) {
        Ok(m) => m,
        Err(e) => return refuse(stream, head_only, &e),
    };
    // An `auto` response from byte 0 without a `Range` may switch to the critical rendition
    // at a key frame if the client proves slow (`super::switch`).
    if auto.is_some() && made.is_none() && !head_only && req.range.is_none() && meta.size > 0 {
        if let Some(done) = respond_switching(edge, stream, peer, name, &meta, auto)? {
            return Ok(done);
        }
    }
    let etag = format!("\"{}\"", blockcast_proto::auth::hex(&meta.id.0));
    // A Range is honoured only if If-Range, when given, names this content (RFC 9110
    // §13.1.5: a strong match of the entity tag; no Last-Modified is sent, so a date never
    // matches).
    let range = match (head_only, req.if_range.as_deref()) {
        (true, _) => None,
        (false, Some(v)) if v != etag => None,
        (false, _) => req.range.as_deref(),
    };
    let size = meta.size;
    let (status, start, end) = match range.map(|r| parse_range(r, size)) {
        None | Some(RangeSpec::Ignore) => (200, 0, size),
        Some(RangeSpec::Bytes { start, end }) => (206, start, end),
        Some(RangeSpec::Unsatisfiable) => {
            return short(
                stream,
                head_only,
                416,
                &[("Content-Range", format!("bytes */{size}"))],
                "",
            )
        }
    };
    let media = if critical {
        "video/mp2t"
    } else {
        content_type(name)
    };
    let headers = body_headers(
        media,
        etag,
        critical,
        (status == 206).then_some((start, end, size)),
    );
    if head_only || start >= end {
        let head = response_head_kept(status, &headers, end - start, keep);
        stream.write_all(head.as_bytes())?;
        stream.flush()?;
        return Ok(true);
    }
    let block = |b: u32| -> Result<Served, EdgeError> {
        match &made {
            Some(m) => edge.critical_block(m, b),
            None => edge.full_block(name, b),
        }
    };
    let bs = meta.block_size.max(1);
    // The first block before the status line: a failure still gets its own answer.
    let first = match block((start / bs) as u32) {
        Ok(b) => b,
        Err(e) => return refuse(stream, false, &e),
    };
    let client = edge.client(peer, name, if critical { "critical" } else { "full" }, auto);
    let before = auto::tcp_delivery(stream);
    let body_started = Instant::now();
    let head = response_head_kept(status, &headers, end - start, keep);
    stream.write_all(head.as_bytes())?;
    send_body(
        edge,
        stream,
        &meta,
        start,
        end,
        first,
        &block,
        &client.entry,
    )?;
    // The client's delivery rate over this response, for `auto` (any rendition measures).
    if end - start >= auto::MIN_SAMPLE_BYTES || (start == 0 && end == size) {
        record_rate(edge, stream, peer, before, body_started);
    }
    Ok(true)
}

/// `/status` (the controller's view, JSON) and `/` (every name and its size): the answer, or
/// `None` for an object's name.
fn listing(
    edge: &Arc<Edge>,
    stream: &mut TcpStream,
    name: &str,
    head_only: bool,
    keep: bool,
) -> Option<io::Result<bool>> {
    if name == "status" {
        let body = serde_json::to_string_pretty(&edge.status(true)).unwrap_or_default() + "\n";
        return Some(document(stream, head_only, "application/json", &body, keep));
    }
    if name.is_empty() {
        let mut body = String::new();
        for (n, size) in edge.names() {
            let size = size.map_or_else(|| "-".to_string(), |s| s.to_string());
            body += &format!("{}\t{size}\n", crate::names::escaped(&n));
        }
        return Some(document(
            stream,
            head_only,
            "text/plain; charset=utf-8",
            &body,
            keep,
        ));
    }
    None
}

/// Answers with a full-rendition response that may switch to the critical one
/// ([`super::switch`]); `None` when it cannot (no bitrate, no `TCP_INFO`): then an ordinary
/// response is made.
fn respond_switching(
    edge: &Arc<Edge>,
    stream: &mut TcpStream,
    peer: SocketAddr,
    name: &str,
    meta: &Meta,
    auto: Option<AutoChoice>,
) -> io::Result<Option<bool>> {
    let Ok(Some(bitrate)) = edge.full_bitrate(name) else {
        return Ok(None);
    };
    let Some(before) = auto::tcp_delivery(stream) else {
        return Ok(None);
    };
    let first = match edge.full_block(name, 0) {
        Ok(b) => b,
        Err(e) => return refuse(stream, false, &e).map(Some),
    };
    let etag = format!("\"{}\"", blockcast_proto::auth::hex(&meta.id.0));
    let mut headers = body_headers(content_type(name), etag, false, None);
    headers.push(("X-Rendition-Switch", "critical".to_string()));
    let head = response_head_close_delimited(200, &headers);
    // What the switch compares, for /status.
    let auto = auto.map(|a| AutoChoice {
        full_bytes_per_sec: Some(bitrate),
        ..a
    });
    let client = edge.client(peer, name, "full", auto);
    let body_started = Instant::now();
    super::switch::send_switching(
        edge,
        stream,
        peer,
        name,
        meta,
        first,
        bitrate,
        before,
        &head,
        &client.entry,
    )?;
    record_rate(edge, stream, peer, Some(before), body_started);
    // The body ends with the connection.
    Ok(Some(false))
}

/// The headers of a body response; `range`: (start, end, size) of a 206's part.
fn body_headers(
    media: &str,
    etag: String,
    critical: bool,
    range: Option<(u64, u64, u64)>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Content-Type", media.to_string()),
        ("Accept-Ranges", "bytes".to_string()),
        ("ETag", etag),
        (
            "X-Rendition",
            if critical { "critical" } else { "full" }.to_string(),
        ),
    ];
    if let Some((start, end, size)) = range {
        headers.push(("Content-Range", format!("bytes {start}-{}/{size}", end - 1)));
    }
    headers
}

/// Records the client's delivery rate over the response that just went out (for `auto`),
/// once its bytes are acknowledged.
fn record_rate(
    edge: &Arc<Edge>,
    stream: &TcpStream,
    peer: SocketAddr,
    before: Option<auto::TcpDelivery>,
    body_started: Instant,
) {
    let Some(before) = before else {
        return;
    };
    let limit = edge.config().wait_timeout.max(READ_TIMEOUT);
    if let Some(rate) = auto::delivery_rate(stream, before, body_started, limit) {
        edge.rates.record(peer.ip(), rate);
    }
}

/// Sends bytes `start..end`, block by block (`first`: the block holding `start`).
#[allow(clippy::too_many_arguments)]
fn send_body(
    edge: &Edge,
    stream: &mut TcpStream,
    meta: &Meta,
    start: u64,
    end: u64,
    first: Served,
    block: &dyn Fn(u32) -> Result<Served, EdgeError>,
    client: &crate::edge::ClientEntry,
) -> io::Result<()> {
    let bs = meta.block_size.max(1);
    let mut pos = start;
    let mut next = Some(first);
    while pos < end {
        if edge.is_stopping() {
            return Err(io::Error::other("the edge is stopping"));
        }
        let b = pos / bs;
        let served = match next.take() {
            Some(s) => s,
            None => block(b as u32).map_err(|e| {
                tracing::warn!(block = b, "edge: {e}; closing the response short");
                io::Error::other(e.to_string())
            })?,
        };
        let at = (pos - b * bs) as usize;
        let upto = ((end - b * bs).min(served.bytes.len() as u64)) as usize;
        if at >= upto {
            return Err(io::Error::other("a block shorter than the object says"));
        }
        stream.write_all(&served.bytes[at..upto])?;
        let n = (upto - at) as u64;
        edge.count_sent(served.tier, n);
        client.bytes.fetch_add(n, Ordering::Relaxed);
        pos += n;
    }
    stream.flush()
}

/// The answer for an object or block that cannot be had.
fn refuse(stream: &mut TcpStream, head_only: bool, e: &EdgeError) -> io::Result<bool> {
    let (status, body) = match e {
        EdgeError::NotFound => (404, "not found\n".to_string()),
        EdgeError::Origin(why) => (502, format!("from the origin: {why}\n")),
        EdgeError::TimedOut => (504, "not received from the origin in time\n".to_string()),
        EdgeError::Stopping => (503, "the edge is stopping\n".to_string()),
        EdgeError::Rendition(r @ RenditionError::NotTransportStream { .. }) => {
            (415, format!("no critical rendition: {r}\n"))
        }
        EdgeError::Rendition(r) => (422, format!("no critical rendition: {r}\n")),
    };
    short(stream, head_only, status, &[], &body)
}

#[cfg(test)]
mod tests {
    use super::{rendition, starts_at_zero, Asked};

    #[test]
    fn the_query_names_the_rendition_and_other_parameters_are_ignored() {
        assert_eq!(rendition(""), Some(Asked::Full));
        assert_eq!(rendition("rendition=critical"), Some(Asked::Critical));
        assert_eq!(rendition("t=5&rendition=critical"), Some(Asked::Critical));
        assert_eq!(rendition("rendition=full"), Some(Asked::Full));
        assert_eq!(rendition("rendition=auto"), Some(Asked::Auto));
        assert_eq!(rendition("rendition=low"), None);
    }

    #[test]
    fn only_a_response_from_byte_zero_chooses_afresh() {
        assert!(starts_at_zero(None));
        assert!(starts_at_zero(Some("bytes=0-")));
        assert!(starts_at_zero(Some("bytes=0-99")));
        assert!(!starts_at_zero(Some("bytes=100-")));
        assert!(!starts_at_zero(Some("bytes=-100")));
    }
}
