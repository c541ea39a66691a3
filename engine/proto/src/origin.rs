//! An origin's request handler, sans-IO (docs/wire.md §17): answers requests for objects by
//! name and catalog queries at the origin's listen address.
//!
//! The node keeps it told what there is: the catalog of hashed objects
//! ([`RequestHandler::set_catalog`], with the names still being hashed) and which sessions are
//! open ([`RequestHandler::open_session`], [`RequestHandler::close_session`]). A request for an
//! object whose session is open is granted at once; the first request for one with no session
//! asks the node to start one ([`OriginEvent::StartSession`]) and every request for it that
//! arrives before the node opens it waits for that one session: that is the batching (what
//! the session does with them, its wait before the first pass, is the node's start policy).
//!
//! Bounds: every answer costs a token from one bucket ([`HandlerConfig::answers_per_sec`],
//! with a burst); a request that finds the bucket empty is dropped unanswered (the client
//! asks again after its back-off). Requests waiting for a session are at most
//! [`HandlerConfig::max_waiting`]; past that, and for a session the node cannot open, the
//! answer is `Busy`. No answer is longer than what asked for it (§17).
//!
//! Drive it as every endpoint ([`crate::Endpoint`]): datagrams that arrive at the listen
//! address in, answers out (`poll_transmit`), timers, events.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{CatalogStatement, Signature, Signer};
use crate::bucket::TokenBucket;
use crate::endpoint::Endpoint;
use crate::wire::origin::{
    AnswerRepr, AnswerStatus, Catalog, CatalogChunkRepr, Grant, OriginPacket, RequestMode,
    CHUNK_HEADER_LEN,
};
use crate::wire::WireError;
use crate::{Destination, Transmit};

/// How the handler answers.
#[derive(Clone, Debug)]
pub struct HandlerConfig {
    /// Answers per second, all clients together (a request storm is answered at this rate;
    /// the rest is dropped).
    pub answers_per_sec: f64,
    /// Answers that may go at once after a quiet spell.
    pub answer_burst: f64,
    /// The delay a `NotReady` or `Busy` answer asks the client to wait.
    pub retry_after: Duration,
    /// Requests that may wait for sessions being set up, in all.
    pub max_waiting: usize,
    /// A session the node has not opened within this long is given up: its waiting
    /// requests are answered `Busy`.
    pub open_timeout: Duration,
    /// Signs the catalog statement (§17.6).
    pub signer: Option<Signer>,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig {
            answers_per_sec: 2_000.0,
            answer_burst: 256.0,
            retry_after: Duration::from_millis(500),
            max_waiting: 4_096,
            open_timeout: Duration::from_secs(5),
            signer: None,
        }
    }
}

/// What the handler needs the node to do, or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginEvent {
    /// Start a session for this catalog object; answer with
    /// [`RequestHandler::open_session`] or [`RequestHandler::refuse_session`].
    StartSession { name: String },
    /// A request was answered (at most the answer rate: for the event log and metrics).
    Answered {
        from: SocketAddr,
        name: String,
        status: AnswerKind,
    },
    /// A datagram could not be decoded.
    BadPacket { from: SocketAddr, error: WireError },
}

/// An answer's status without its fields (for counting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnswerKind {
    Granted,
    Found,
    NotFound,
    NotReady,
    Busy,
}

impl AnswerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Granted => "granted",
            AnswerKind::Found => "found",
            AnswerKind::NotFound => "not_found",
            AnswerKind::NotReady => "not_ready",
            AnswerKind::Busy => "busy",
        }
    }

    fn of(s: &AnswerStatus) -> Self {
        match s {
            AnswerStatus::Granted(_) => AnswerKind::Granted,
            AnswerStatus::Found { .. } => AnswerKind::Found,
            AnswerStatus::NotFound => AnswerKind::NotFound,
            AnswerStatus::NotReady { .. } => AnswerKind::NotReady,
            AnswerStatus::Busy { .. } => AnswerKind::Busy,
        }
    }
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandlerStats {
    pub requests: u64,
    pub catalog_queries: u64,
    pub granted: u64,
    pub found: u64,
    pub not_found: u64,
    pub not_ready: u64,
    pub busy: u64,
    pub catalog_chunks: u64,
    /// Requests and queries dropped unanswered: the answer rate was spent.
    pub rate_limited: u64,
    pub bad_packets: u64,
    /// Sessions asked of the node.
    pub sessions_asked: u64,
}

/// One request waiting for a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Waiting {
    from: SocketAddr,
    request_id: u64,
}

/// A session being set up: who waits for it, and since when.
#[derive(Clone, Debug)]
struct Opening {
    asked: Instant,
    waiting: Vec<Waiting>,
}

/// The catalog as published: parsed (for requests) and serialized (for queries).
struct Published {
    catalog: Catalog,
    bytes: Vec<u8>,
    hash: [u8; 32],
    issued: u64,
    sig: Option<Signature>,
}

/// An origin's request handler.
pub struct RequestHandler {
    cfg: HandlerConfig,
    published: Published,
    /// Names in the catalog directory not hashed yet.
    unready: std::collections::BTreeSet<String>,
    /// Open sessions by object name.
    open: BTreeMap<String, Grant>,
    /// Sessions the node was asked to start, by object name.
    opening: BTreeMap<String, Opening>,
    waiting: usize,
    answers: VecDeque<(SocketAddr, AnswerRepr)>,
    /// Catalog chunks to send: (to, request id, offset, most bytes).
    chunks: VecDeque<(SocketAddr, u64, u32, usize)>,
    bucket: TokenBucket,
    events: VecDeque<OriginEvent>,
    stats: HandlerStats,
}

impl RequestHandler {
    pub fn new(cfg: HandlerConfig) -> Self {
        let bucket = TokenBucket::new(cfg.answer_burst);
        let mut h = RequestHandler {
            published: Published {
                catalog: Catalog::default(),
                bytes: Vec::new(),
                hash: [0; 32],
                issued: 0,
                sig: None,
            },
            cfg,
            unready: Default::default(),
            open: BTreeMap::new(),
            opening: BTreeMap::new(),
            waiting: 0,
            answers: VecDeque::new(),
            chunks: VecDeque::new(),
            bucket,
            events: VecDeque::new(),
            stats: HandlerStats::default(),
        };
        // An empty catalog always serializes.
        let _ = h.set_catalog(Catalog::default(), Vec::new(), 0);
        h
    }

    pub fn stats(&self) -> &HandlerStats {
        &self.stats
    }

    /// The catalog being published.
    pub fn catalog(&self) -> &Catalog {
        &self.published.catalog
    }

    /// The catalog's BLAKE3 and its signature, if signed.
    pub fn catalog_signature(&self) -> ([u8; 32], Option<Signature>) {
        (self.published.hash, self.published.sig)
    }

    /// Publishes `catalog` (made at `issued`, Unix seconds); `unready` names the objects still
    /// being hashed (answered `NotReady`). Sessions of objects no longer in it, or whose hash
    /// changed, stop taking requests. Fails (and keeps the old catalog) if it cannot be
    /// serialized (unsorted, or too large).
    pub fn set_catalog(
        &mut self,
        catalog: Catalog,
        unready: Vec<String>,
        issued: u64,
    ) -> Result<(), WireError> {
        let bytes = catalog.emit()?;
        let hash = *blake3::hash(&bytes).as_bytes();
        let sig = self.cfg.signer.as_ref().map(|s| {
            s.sign_catalog(&CatalogStatement {
                generation: catalog.generation,
                catalog_len: bytes.len() as u32,
                catalog_hash: hash,
                issued,
            })
        });
        self.open
            .retain(|name, g| catalog.get(name).is_some_and(|e| e.hash == g.hash));
        self.published = Published {
            catalog,
            bytes,
            hash,
            issued,
            sig,
        };
        self.unready = unready.into_iter().collect();
        Ok(())
    }

    /// The node opened the session for `name`: every request waiting for it is granted, and
    /// later ones too, until [`RequestHandler::close_session`].
    pub fn open_session(&mut self, name: &str, grant: Grant) {
        self.open.insert(name.to_owned(), grant);
        if let Some(o) = self.opening.remove(name) {
            self.waiting -= o.waiting.len();
            for w in o.waiting {
                self.answer(w, name, AnswerStatus::Granted(grant));
            }
        }
    }

    /// The node could not start a session for `name` (no free group): its waiting requests
    /// are answered `Busy`.
    pub fn refuse_session(&mut self, name: &str) {
        if let Some(o) = self.opening.remove(name) {
            self.waiting -= o.waiting.len();
            let retry = self.retry_ms();
            for w in o.waiting {
                self.answer(
                    w,
                    name,
                    AnswerStatus::Busy {
                        retry_after_ms: retry,
                    },
                );
            }
        }
    }

    /// The session `session` for `name` takes no more requests (it is closing or over); the
    /// next request starts another.
    pub fn close_session(&mut self, name: &str, session: u32) {
        if self.open.get(name).is_some_and(|g| g.session == session) {
            self.open.remove(name);
        }
    }

    /// The session open for `name`, if any.
    pub fn session(&self, name: &str) -> Option<&Grant> {
        self.open.get(name)
    }

    fn retry_ms(&self) -> u16 {
        self.cfg.retry_after.as_millis().min(u128::from(u16::MAX)) as u16
    }

    fn answer(&mut self, to: Waiting, name: &str, status: AnswerStatus) {
        let kind = AnswerKind::of(&status);
        match kind {
            AnswerKind::Granted => self.stats.granted += 1,
            AnswerKind::Found => self.stats.found += 1,
            AnswerKind::NotFound => self.stats.not_found += 1,
            AnswerKind::NotReady => self.stats.not_ready += 1,
            AnswerKind::Busy => self.stats.busy += 1,
        }
        self.answers.push_back((
            to.from,
            AnswerRepr {
                request_id: to.request_id,
                status,
            },
        ));
        self.events.push_back(OriginEvent::Answered {
            from: to.from,
            name: name.to_owned(),
            status: kind,
        });
    }

    fn on_request(&mut self, now: Instant, w: Waiting, mode: RequestMode, name: String) {
        self.stats.requests += 1;
        let Some(entry) = self.published.catalog.get(&name) else {
            let status = if self.unready.contains(&name) {
                AnswerStatus::NotReady {
                    retry_after_ms: self.retry_ms(),
                }
            } else {
                AnswerStatus::NotFound
            };
            return self.answer(w, &name, status);
        };
        let (size, hash) = (entry.size, entry.hash);
        if mode == RequestMode::Lookup {
            return self.answer(w, &name, AnswerStatus::Found { size, hash });
        }
        if let Some(g) = self.open.get(&name).copied() {
            return self.answer(w, &name, AnswerStatus::Granted(g));
        }
        if let Some(o) = self.opening.get_mut(&name) {
            // A client that asks again while it waits is one waiter, not two.
            if o.waiting.contains(&w) {
                return;
            }
        }
        if self.waiting >= self.cfg.max_waiting {
            let retry = self.retry_ms();
            return self.answer(
                w,
                &name,
                AnswerStatus::Busy {
                    retry_after_ms: retry,
                },
            );
        }
        self.waiting += 1;
        match self.opening.get_mut(&name) {
            Some(o) => o.waiting.push(w),
            None => {
                self.stats.sessions_asked += 1;
                self.opening.insert(
                    name.clone(),
                    Opening {
                        asked: now,
                        waiting: vec![w],
                    },
                );
                self.events.push_back(OriginEvent::StartSession { name });
            }
        }
    }

    fn chunk_room(&self, query_len: usize) -> usize {
        query_len.saturating_sub(
            CHUNK_HEADER_LEN + self.published.sig.map_or(0, |_| crate::auth::SIGNED_LEN),
        )
    }
}

impl Endpoint for RequestHandler {
    type Event = OriginEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let packet = match OriginPacket::parse(bytes) {
            Ok(p) => p,
            Err(error) => {
                self.stats.bad_packets += 1;
                self.events
                    .push_back(OriginEvent::BadPacket { from, error });
                return;
            }
        };
        if !matches!(
            packet,
            OriginPacket::Request(_) | OriginPacket::CatalogQuery(_)
        ) {
            self.stats.bad_packets += 1;
            return;
        }
        // Every answer is paid for before any work is done for it.
        if !self.bucket.take(now, self.cfg.answers_per_sec, 1.0) {
            self.stats.rate_limited += 1;
            return;
        }
        match packet {
            OriginPacket::Request(q) => {
                let w = Waiting {
                    from,
                    request_id: q.request_id,
                };
                self.on_request(now, w, q.mode, q.name);
            }
            OriginPacket::CatalogQuery(q) => {
                self.stats.catalog_queries += 1;
                let room = self.chunk_room(bytes.len());
                self.chunks.push_back((from, q.request_id, q.offset, room));
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<String> = self
            .opening
            .iter()
            .filter(|(_, o)| now.saturating_duration_since(o.asked) >= self.cfg.open_timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for name in late {
            self.refuse_session(&name);
        }
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (to, len) = if let Some((to, a)) = self.answers.pop_front() {
                (to, OriginPacket::Answer(a).emit(buf))
            } else {
                let (to, request_id, offset, room) = self.chunks.pop_front()?;
                let p = &self.published;
                let at = (offset as usize).min(p.bytes.len());
                let end = (at + room).min(p.bytes.len());
                self.stats.catalog_chunks += 1;
                let chunk = CatalogChunkRepr {
                    request_id,
                    generation: p.catalog.generation,
                    catalog_len: p.bytes.len() as u32,
                    catalog_hash: p.hash,
                    issued: p.issued,
                    offset: at as u32,
                    sig: p.sig,
                    bytes: &p.bytes[at..end],
                };
                (to, OriginPacket::CatalogChunk(chunk).emit(buf))
            };
            // An answer that does not fit the caller's buffer is dropped (never happens with a
            // buffer of a datagram's size).
            if let Ok(len) = len {
                return Some(Transmit {
                    destination: Destination::Peer(to),
                    len,
                    payload: None,
                });
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.opening
            .values()
            .map(|o| o.asked + self.cfg.open_timeout)
            .min()
    }

    fn poll_event(&mut self) -> Option<OriginEvent> {
        self.events.pop_front()
    }

    fn is_finished(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::origin::{CatalogEntry, CatalogQueryRepr, RequestRepr, MIN_REQUEST_LEN};

    fn catalog() -> Catalog {
        Catalog {
            generation: 1,
            entries: vec![
                CatalogEntry {
                    name: "a.iso".into(),
                    size: 10,
                    hash: [1; 32],
                },
                CatalogEntry {
                    name: "b.iso".into(),
                    size: 20,
                    hash: [2; 32],
                },
            ],
        }
    }

    fn request(id: u64, mode: RequestMode, name: &str) -> Vec<u8> {
        let p = OriginPacket::Request(RequestRepr {
            request_id: id,
            mode,
            name: name.into(),
        });
        let mut b = vec![0u8; p.buffer_len()];
        p.emit(&mut b).unwrap();
        b
    }

    fn grant(session: u32) -> Grant {
        Grant {
            session,
            group: "239.255.1.1:9000".parse().unwrap(),
            size: 10,
            hash: [1; 32],
        }
    }

    /// Every answer sent, with where it went.
    fn answers(h: &mut RequestHandler, now: Instant) -> Vec<(SocketAddr, AnswerRepr)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Some(t) = h.poll_transmit(now, &mut buf) {
            let Destination::Peer(to) = t.destination else {
                panic!("answers go to peers")
            };
            assert!(
                t.len < MIN_REQUEST_LEN,
                "an answer is shorter than a request"
            );
            if let Ok(OriginPacket::Answer(a)) = OriginPacket::parse(&buf[..t.len]) {
                out.push((to, a));
            }
        }
        out
    }

    fn peer(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 5000))
    }

    #[test]
    fn unknown_names_are_answered_at_once_and_unhashed_ones_not_ready() {
        let t = Instant::now();
        let mut h = RequestHandler::new(HandlerConfig::default());
        h.set_catalog(catalog(), vec!["new.iso".into()], 0).unwrap();
        h.handle_datagram(t, peer(1), &request(1, RequestMode::Fetch, "nope.iso"));
        h.handle_datagram(t, peer(1), &request(2, RequestMode::Fetch, "new.iso"));
        h.handle_datagram(t, peer(1), &request(3, RequestMode::Lookup, "b.iso"));
        let got = answers(&mut h, t);
        assert_eq!(got[0].1.status, AnswerStatus::NotFound);
        assert!(matches!(
            got[1].1.status,
            AnswerStatus::NotReady {
                retry_after_ms: 500
            }
        ));
        assert_eq!(
            got[2].1.status,
            AnswerStatus::Found {
                size: 20,
                hash: [2; 32]
            }
        );
        assert_eq!(h.stats().sessions_asked, 0, "a lookup starts no session");
    }

    #[test]
    fn requests_while_a_session_is_set_up_wait_for_that_one_session() {
        let t = Instant::now();
        let mut h = RequestHandler::new(HandlerConfig::default());
        h.set_catalog(catalog(), Vec::new(), 0).unwrap();
        for i in 1..=3 {
            h.handle_datagram(
                t,
                peer(i),
                &request(u64::from(i), RequestMode::Fetch, "a.iso"),
            );
        }
        // A retry of a waiting request does not wait twice.
        h.handle_datagram(t, peer(1), &request(1, RequestMode::Fetch, "a.iso"));
        let starts: Vec<_> = std::iter::from_fn(|| h.poll_event())
            .filter(|e| matches!(e, OriginEvent::StartSession { .. }))
            .collect();
        assert_eq!(
            starts,
            vec![OriginEvent::StartSession {
                name: "a.iso".into()
            }]
        );
        assert!(
            answers(&mut h, t).is_empty(),
            "nobody is answered before the session opens"
        );
        h.open_session("a.iso", grant(7));
        let got = answers(&mut h, t);
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|(_, a)| a.status == AnswerStatus::Granted(grant(7))));
        // A late request joins the open session; once it closes, the next one starts another.
        h.handle_datagram(t, peer(4), &request(4, RequestMode::Fetch, "a.iso"));
        assert_eq!(
            answers(&mut h, t)[0].1.status,
            AnswerStatus::Granted(grant(7))
        );
        h.close_session("a.iso", 7);
        h.handle_datagram(t, peer(5), &request(5, RequestMode::Fetch, "a.iso"));
        assert!(std::iter::from_fn(|| h.poll_event()).any(|e| e
            == OriginEvent::StartSession {
                name: "a.iso".into()
            }));
        assert_eq!(h.stats().sessions_asked, 2);
    }

    #[test]
    fn a_session_not_opened_in_time_or_refused_answers_busy() {
        let t = Instant::now();
        let mut h = RequestHandler::new(HandlerConfig::default());
        h.set_catalog(catalog(), Vec::new(), 0).unwrap();
        h.handle_datagram(t, peer(1), &request(1, RequestMode::Fetch, "a.iso"));
        h.handle_datagram(t, peer(2), &request(2, RequestMode::Fetch, "b.iso"));
        h.refuse_session("b.iso");
        let got = answers(&mut h, t);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, peer(2));
        assert!(matches!(got[0].1.status, AnswerStatus::Busy { .. }));
        let late = h
            .poll_timeout()
            .expect("a timer for the session being opened");
        assert_eq!(late, t + Duration::from_secs(5));
        h.handle_timeout(late);
        let got = answers(&mut h, late);
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0].1.status, AnswerStatus::Busy { .. }));
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn a_changed_object_stops_its_session_taking_requests() {
        let mut h = RequestHandler::new(HandlerConfig::default());
        h.set_catalog(catalog(), Vec::new(), 0).unwrap();
        h.open_session("a.iso", grant(7));
        let mut c = catalog();
        c.generation = 2;
        c.entries[0].hash = [9; 32];
        h.set_catalog(c, Vec::new(), 0).unwrap();
        assert!(h.session("a.iso").is_none());
    }

    #[test]
    fn a_request_storm_is_answered_at_the_bounded_rate() {
        let t = Instant::now();
        let cfg = HandlerConfig {
            answers_per_sec: 1_000.0,
            answer_burst: 100.0,
            ..HandlerConfig::default()
        };
        let mut h = RequestHandler::new(cfg);
        h.set_catalog(catalog(), Vec::new(), 0).unwrap();
        // 100,000 requests over one virtual second, from many sources.
        let mut sent = 0;
        for i in 0..100_000u32 {
            let now = t + Duration::from_micros(u64::from(i) * 10);
            let from = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 5000));
            h.handle_datagram(
                now,
                from,
                &request(u64::from(i), RequestMode::Fetch, "nope"),
            );
            sent += answers(&mut h, now).len();
        }
        // At most the burst plus one second at the rate.
        assert!(sent <= 1_100 + 1, "{sent} answers");
        assert!(
            sent >= 1_000,
            "{sent} answers: the rate is given, not starved"
        );
        assert_eq!(h.stats().rate_limited, 100_000 - sent as u64);
    }

    #[test]
    fn catalog_chunks_are_no_longer_than_the_query_and_carry_the_signature() {
        let t = Instant::now();
        let signer = Signer::from_seed(&[3; 32]);
        let mut h = RequestHandler::new(HandlerConfig {
            signer: Some(signer.clone()),
            ..HandlerConfig::default()
        });
        let entries = (0..100)
            .map(|i| CatalogEntry {
                name: format!("dir/object-{i:03}.bin"),
                size: i,
                hash: [i as u8; 32],
            })
            .collect();
        let c = Catalog {
            generation: 42,
            entries,
        };
        h.set_catalog(c.clone(), Vec::new(), 1_700_000_000).unwrap();
        let trust = crate::auth::TrustedKeys::new(&[signer.public_key()]).unwrap();
        let mut assembled = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..1000 {
            let q = OriginPacket::CatalogQuery(CatalogQueryRepr {
                request_id: 9,
                offset: assembled.len() as u32,
            });
            let mut qb = vec![0u8; 600];
            q.emit(&mut qb).unwrap();
            h.handle_datagram(t, peer(1), &qb);
            let tx = h.poll_transmit(t, &mut buf).expect("a chunk");
            assert!(tx.len <= qb.len(), "no amplification");
            let Ok(OriginPacket::CatalogChunk(ch)) = OriginPacket::parse(&buf[..tx.len]) else {
                panic!("a chunk")
            };
            let st = CatalogStatement {
                generation: ch.generation,
                catalog_len: ch.catalog_len,
                catalog_hash: ch.catalog_hash,
                issued: ch.issued,
            };
            assert_eq!(
                trust.check_catalog(&st, ch.sig.as_ref()),
                crate::auth::Verdict::Trusted
            );
            assembled.extend_from_slice(ch.bytes);
            if assembled.len() == ch.catalog_len as usize {
                break;
            }
        }
        assert_eq!(Catalog::parse(&assembled).unwrap(), c);
    }
}
