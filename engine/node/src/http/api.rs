//! A small HTTP/1.1 server for generated documents (a daemon's JSON API, its Prometheus
//! metrics): one request per connection, the head parsed as for the object server, the
//! answer made whole by a handler and written with its length.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::parse::request_path;
use super::response::response_head;

/// Connections answered at once; more get `503`.
const MAX_CONNECTIONS: usize = 32;

/// One request, as a handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: String,
    /// The percent-decoded path, without the query.
    pub path: String,
    /// The query string after `?`, undecoded ("" without one).
    pub query: String,
    pub peer: SocketAddr,
}

/// A whole answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl ApiResponse {
    /// A JSON document.
    pub fn json(status: u16, body: String) -> Self {
        ApiResponse {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// A line of text.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        ApiResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What answers requests.
pub type Handler = dyn Fn(&ApiRequest) -> ApiResponse + Send + Sync;

/// Binds `addr` (exactly that address), then serves `handler` on a thread until `stop` is
/// set. Returns the thread and the bound address (a port of 0 is chosen by the system).
pub fn spawn_api(
    addr: SocketAddr,
    name: &'static str,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
) -> Result<(std::thread::JoinHandle<()>, SocketAddr), crate::NodeError> {
    let listener =
        TcpListener::bind(addr).map_err(|source| crate::NodeError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| crate::NodeError::Listen { addr, source })?;
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = serve_api(listener, handler, &stop) {
                tracing::warn!("{name}: {e}");
            }
        })
        .map_err(|e| crate::NodeError::spawn("an HTTP thread", e))?;
    Ok((h, bound))
}

/// Serves until `stop` is set (noticed within about 50 ms).
pub fn serve_api(
    listener: TcpListener,
    handler: Arc<Handler>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    super::accept_loop(&listener, stop, |stream, peer| {
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            super::reject(stream);
            return;
        }
        // Only the accept thread increments, so the check above holds.
        active.fetch_add(1, Ordering::AcqRel);
        let guard = super::ActiveGuard(active.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("bc-api".into())
            .spawn(move || {
                let _guard = guard;
                answer(stream, peer, &*handler);
            });
        if let Err(e) = spawned {
            tracing::warn!(%peer, error = %e, "http: cannot start a connection thread");
        }
    })
}

fn answer(mut stream: TcpStream, peer: SocketAddr, handler: &Handler) {
    let resp = match super::server::read_request(&mut stream) {
        Ok(req) => {
            let (path, query) = req
                .target
                .split_once('?')
                .unwrap_or((req.target.as_str(), ""));
            match request_path(path).and_then(|p| String::from_utf8(p).ok()) {
                Some(path) => handler(&ApiRequest {
                    method: req.method.clone(),
                    path,
                    query: query.to_owned(),
                    peer,
                }),
                None => ApiResponse::text(400, "bad path\n"),
            }
        }
        Err(super::server::ReadFail::Closed) => return,
        Err(super::server::ReadFail::TooLarge) => ApiResponse::text(431, "request too large\n"),
        Err(super::server::ReadFail::TimedOut) => ApiResponse::text(408, "request timeout\n"),
        Err(super::server::ReadFail::Bad) => ApiResponse::text(400, "bad request\n"),
    };
    let head = response_head(
        resp.status,
        &[
            ("Content-Type", resp.content_type.to_string()),
            ("Cache-Control", "no-store".to_string()),
        ],
        resp.body.len() as u64,
    );
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(resp.body.as_bytes()))
        .and_then(|()| stream.flush());
    super::server::finish(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_handler_answers_with_its_status_and_body() {
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(|r: &ApiRequest| {
            ApiResponse::json(
                if r.method == "POST" { 201 } else { 200 },
                format!("{{\"path\":{:?},\"query\":{:?}}}", r.path, r.query),
            )
        });
        let (t, addr) = spawn_api(
            "127.0.0.1:0".parse().unwrap(),
            "test-api",
            handler,
            stop.clone(),
        )
        .unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /objects/a%20b/request?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert!(got.starts_with("HTTP/1.1 201"), "{got}");
        assert!(
            got.ends_with("{\"path\":\"/objects/a b/request\",\"query\":\"x=1\"}"),
            "{got}"
        );
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
