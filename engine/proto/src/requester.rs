//! An origin's client, sans-IO (docs/wire.md §17): asks an origin for objects by name and for
//! its catalog, and waits for the answers, asking again as it must.
//!
//! A request goes again after `retry` (doubling, up to `max_retry`) until answered, and after
//! the delay a `NotReady` or `Busy` answer asks for; it gives up after `timeout`. A catalog
//! is fetched chunk by chunk, a few queries in flight, restarted when its generation changes,
//! and handed out only once whole, its hash right and (with trusted keys) its signature by a
//! trusted key. What `fetch`, the agent and the edge use, each on the node's one driver.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::auth::{CatalogStatement, TrustedKeys, Verdict};
use crate::endpoint::Endpoint;
use crate::rng::Rng;
use crate::wire::origin::{
    AnswerStatus, Catalog, CatalogQueryRepr, OriginPacket, RequestMode, RequestRepr,
    MAX_CATALOG_LEN,
};
use crate::{Destination, Transmit};

/// Catalog queries are padded to this (the chunks that answer them are as long at most).
pub const QUERY_LEN: usize = 1200;
/// Catalog queries in flight at once.
const QUERY_WINDOW: usize = 8;

/// How the client asks.
#[derive(Clone, Debug)]
pub struct RequesterConfig {
    /// The origin's listen address.
    pub origin: SocketAddr,
    /// First wait for an answer before asking again.
    pub retry: Duration,
    /// Longest wait between two tries.
    pub max_retry: Duration,
    /// Give a request (or the catalog) up after this long unanswered.
    pub timeout: Duration,
    /// Keys the catalog must be signed by (empty: not checked).
    pub trust: TrustedKeys,
    /// Seeds the request ids.
    pub seed: u64,
}

impl RequesterConfig {
    pub fn new(origin: SocketAddr, seed: u64) -> Self {
        RequesterConfig {
            origin,
            retry: Duration::from_millis(200),
            max_retry: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            trust: TrustedKeys::default(),
            seed,
        }
    }
}

/// What came of what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequesterEvent {
    /// The final answer to a request: granted, found, or not in the catalog.
    Answer {
        request_id: u64,
        name: String,
        status: AnswerStatus,
    },
    /// The origin said to wait (not hashed yet, or busy); the request goes again.
    Waiting { request_id: u64, name: String },
    /// No final answer within the timeout.
    TimedOut { request_id: u64, name: String },
    /// The catalog, whole and checked; `signer` is the trusted key that signed it.
    Catalog {
        catalog: Catalog,
        signer: Option<[u8; 32]>,
    },
    /// The catalog could not be had: why.
    CatalogFailed { why: &'static str },
}

#[derive(Clone, Debug)]
struct Pending {
    name: String,
    mode: RequestMode,
    started: Instant,
    next_send: Instant,
    wait: Duration,
}

/// A catalog being assembled.
#[derive(Clone, Debug)]
struct Assembly {
    started: Instant,
    request_id: u64,
    /// Set by the first chunk: generation, length, hash, issued, signature.
    head: Option<(CatalogStatement, Option<crate::auth::Signature>)>,
    bytes: Vec<u8>,
    /// Received ranges by offset (chunks arrive in any order).
    have: BTreeMap<u32, u32>,
    /// Offsets asked for and when.
    asked: BTreeMap<u32, Instant>,
    wait: Duration,
}

/// An origin's client.
pub struct Requester {
    cfg: RequesterConfig,
    rng: Rng,
    pending: BTreeMap<u64, Pending>,
    catalog: Option<Assembly>,
    out: VecDeque<OriginPacket<'static>>,
    events: VecDeque<RequesterEvent>,
    /// Datagrams that were not an answer to anything asked.
    pub strangers: u64,
}

impl Requester {
    pub fn new(cfg: RequesterConfig) -> Self {
        Requester {
            rng: Rng::new(cfg.seed),
            cfg,
            pending: BTreeMap::new(),
            catalog: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            strangers: 0,
        }
    }

    /// Asks for `name`; returns the request's id (its events carry it).
    pub fn request(&mut self, now: Instant, name: &str, mode: RequestMode) -> u64 {
        let id = loop {
            let id = self.rng.next_u64();
            if id != 0 && !self.pending.contains_key(&id) {
                break id;
            }
        };
        self.pending.insert(
            id,
            Pending {
                name: name.to_owned(),
                mode,
                started: now,
                next_send: now,
                wait: self.cfg.retry,
            },
        );
        id
    }

    /// Fetches the catalog (again, if one was fetched before).
    pub fn fetch_catalog(&mut self, now: Instant) {
        self.catalog = Some(Assembly {
            started: now,
            request_id: self.rng.next_u64(),
            head: None,
            bytes: Vec::new(),
            have: BTreeMap::new(),
            asked: BTreeMap::from([(0, now - self.cfg.max_retry)]),
            wait: self.cfg.retry,
        });
    }

    /// Nothing is being asked.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.catalog.is_none()
    }

    fn on_chunk(&mut self, now: Instant, c: crate::wire::origin::CatalogChunkRepr<'_>) {
        let Some(a) = self.catalog.as_mut() else {
            self.strangers += 1;
            return;
        };
        if c.request_id != a.request_id {
            self.strangers += 1;
            return;
        }
        let st = CatalogStatement {
            generation: c.generation,
            catalog_len: c.catalog_len,
            catalog_hash: c.catalog_hash,
            issued: c.issued,
        };
        match &a.head {
            Some((h, _)) if *h == st => {}
            // Another catalog than the one being assembled (it changed): start over on it.
            _ => {
                if c.catalog_len as usize > MAX_CATALOG_LEN {
                    return;
                }
                a.head = Some((st, c.sig));
                a.bytes = vec![0u8; c.catalog_len as usize];
                a.have.clear();
                a.asked.clear();
            }
        }
        let (start, end) = (c.offset as usize, c.offset as usize + c.bytes.len());
        if end > a.bytes.len() {
            return;
        }
        a.bytes[start..end].copy_from_slice(c.bytes);
        a.asked.remove(&c.offset);
        if !c.bytes.is_empty() {
            a.have.insert(c.offset, end as u32);
        }
        a.wait = self.cfg.retry;
        if covered(&a.have) >= a.bytes.len() {
            let a = self.catalog.take().expect("assembling");
            self.finish_catalog(a);
        } else {
            self.next_queries(now);
        }
    }

    fn finish_catalog(&mut self, a: Assembly) {
        let Some((st, sig)) = a.head else {
            return;
        };
        if blake3::hash(&a.bytes).as_bytes() != &st.catalog_hash {
            self.events.push_back(RequesterEvent::CatalogFailed {
                why: "the catalog's bytes do not match its hash",
            });
            return;
        }
        let signer = if self.cfg.trust.is_empty() {
            None
        } else {
            match self.cfg.trust.check_catalog(&st, sig.as_ref()) {
                Verdict::Trusted => sig.map(|s| s.key),
                Verdict::Unsigned => {
                    return self.events.push_back(RequesterEvent::CatalogFailed {
                        why: "the catalog is not signed, and keys are trusted",
                    })
                }
                Verdict::UntrustedKey => {
                    return self.events.push_back(RequesterEvent::CatalogFailed {
                        why: "the catalog is signed by a key that is not trusted",
                    })
                }
                Verdict::BadSignature => {
                    return self.events.push_back(RequesterEvent::CatalogFailed {
                        why: "the catalog's signature does not hold",
                    })
                }
            }
        };
        match Catalog::parse(&a.bytes) {
            Ok(catalog) if catalog.generation == st.generation => self
                .events
                .push_back(RequesterEvent::Catalog { catalog, signer }),
            _ => self.events.push_back(RequesterEvent::CatalogFailed {
                why: "the catalog is malformed",
            }),
        }
    }

    /// The next offset of the catalog not held and not asked for lately.
    fn next_queries(&mut self, now: Instant) {
        let Some(a) = self.catalog.as_mut() else {
            return;
        };
        if now.saturating_duration_since(a.started) >= self.cfg.timeout {
            self.catalog = None;
            self.events.push_back(RequesterEvent::CatalogFailed {
                why: "the origin did not answer",
            });
            return;
        }
        // Queries unanswered for their wait go again (with a longer wait).
        let stale: Vec<u32> = a
            .asked
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= a.wait)
            .map(|(o, _)| *o)
            .collect();
        let mut asks = Vec::new();
        if !stale.is_empty() {
            a.wait = (a.wait * 2).min(self.cfg.max_retry);
        }
        for o in stale {
            a.asked.insert(o, now);
            asks.push(o);
        }
        if a.head.is_some() {
            // Fill the window with the gaps after what is held or asked.
            let room = QUERY_LEN - crate::wire::origin::CHUNK_HEADER_LEN - crate::auth::SIGNED_LEN;
            let mut at = 0usize;
            let len = a.bytes.len();
            while a.asked.len() < QUERY_WINDOW && at < len {
                match a.have.range(..=at as u32).next_back() {
                    Some((_, &end)) if end as usize > at => {
                        at = end as usize;
                        continue;
                    }
                    _ => {}
                }
                if let std::collections::btree_map::Entry::Vacant(e) = a.asked.entry(at as u32) {
                    e.insert(now);
                    asks.push(at as u32);
                }
                at += room;
            }
        }
        let id = a.request_id;
        for offset in asks {
            self.out
                .push_back(OriginPacket::CatalogQuery(CatalogQueryRepr {
                    request_id: id,
                    offset,
                }));
        }
    }
}

/// Bytes held from offset 0 without a gap.
fn covered(have: &BTreeMap<u32, u32>) -> usize {
    let mut end = 0u32;
    for (&s, &e) in have {
        if s > end {
            break;
        }
        end = end.max(e);
    }
    end as usize
}

impl Endpoint for Requester {
    type Event = RequesterEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if from != self.cfg.origin {
            self.strangers += 1;
            return;
        }
        match OriginPacket::parse(bytes) {
            Ok(OriginPacket::Answer(a)) => {
                let Some(p) = self.pending.get_mut(&a.request_id) else {
                    self.strangers += 1;
                    return;
                };
                match a.status {
                    AnswerStatus::NotReady { retry_after_ms }
                    | AnswerStatus::Busy { retry_after_ms } => {
                        let wait = Duration::from_millis(u64::from(retry_after_ms))
                            .clamp(self.cfg.retry, self.cfg.max_retry);
                        p.next_send = now + wait;
                        self.events.push_back(RequesterEvent::Waiting {
                            request_id: a.request_id,
                            name: p.name.clone(),
                        });
                    }
                    status => {
                        let p = self.pending.remove(&a.request_id).expect("pending");
                        self.events.push_back(RequesterEvent::Answer {
                            request_id: a.request_id,
                            name: p.name,
                            status,
                        });
                    }
                }
            }
            Ok(OriginPacket::CatalogChunk(c)) => self.on_chunk(now, c),
            _ => self.strangers += 1,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let mut gone = Vec::new();
        for (&id, p) in self.pending.iter_mut() {
            if now.saturating_duration_since(p.started) >= self.cfg.timeout {
                gone.push(id);
            } else if now >= p.next_send {
                self.out.push_back(OriginPacket::Request(RequestRepr {
                    request_id: id,
                    mode: p.mode,
                    name: p.name.clone(),
                }));
                p.next_send = now + p.wait;
                p.wait = (p.wait * 2).min(self.cfg.max_retry);
            }
        }
        for id in gone {
            let p = self.pending.remove(&id).expect("pending");
            self.events.push_back(RequesterEvent::TimedOut {
                request_id: id,
                name: p.name,
            });
        }
        self.next_queries(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.out.is_empty() && self.poll_timeout().is_some_and(|t| t <= now) {
            self.handle_timeout(now);
        }
        loop {
            let p = self.out.pop_front()?;
            let len = match &p {
                OriginPacket::CatalogQuery(_) => {
                    // Padded to QUERY_LEN, so the chunks that answer may be as long.
                    let Some(b) = buf.get_mut(..QUERY_LEN) else {
                        continue;
                    };
                    b.fill(0);
                    p.emit(b).map(|_| QUERY_LEN)
                }
                _ => p.emit(buf),
            };
            if let Ok(len) = len {
                return Some(Transmit {
                    destination: Destination::Peer(self.cfg.origin),
                    len,
                    payload: None,
                });
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self
            .pending
            .values()
            .map(|p| p.next_send.min(p.started + self.cfg.timeout))
            .min();
        if let Some(a) = &self.catalog {
            let next = a
                .asked
                .values()
                .map(|x| *x + a.wait)
                .min()
                .unwrap_or(a.started)
                .min(a.started + self.cfg.timeout);
            t = Some(t.map_or(next, |t| t.min(next)));
        }
        t
    }

    fn poll_event(&mut self) -> Option<RequesterEvent> {
        self.events.pop_front()
    }

    fn is_finished(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{HandlerConfig, OriginEvent, RequestHandler};
    use crate::wire::origin::{CatalogEntry, Grant};

    /// Runs a client and a handler against each other on a virtual clock, losing every
    /// `lose`-th datagram either way, until the client is idle or `limit` passes.
    fn exchange(
        c: &mut Requester,
        h: &mut RequestHandler,
        t0: Instant,
        lose: usize,
        on_start: &mut dyn FnMut(&mut RequestHandler, String),
    ) -> Vec<RequesterEvent> {
        let origin: SocketAddr = "10.0.0.1:9100".parse().unwrap();
        let me: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let mut now = t0;
        let mut buf = vec![0u8; 65536];
        let mut n = 0usize;
        let mut events = Vec::new();
        for _ in 0..100_000 {
            while let Some(tx) = c.poll_transmit(now, &mut buf) {
                n += 1;
                if lose == 0 || n % lose != 0 {
                    let d = buf[..tx.len].to_vec();
                    h.handle_datagram(now, me, &d);
                }
            }
            while let Some(e) = h.poll_event() {
                if let OriginEvent::StartSession { name } = e {
                    on_start(h, name);
                }
            }
            while let Some(tx) = h.poll_transmit(now, &mut buf) {
                n += 1;
                if lose == 0 || n % lose != 0 {
                    let d = buf[..tx.len].to_vec();
                    c.handle_datagram(now, origin, &d);
                }
            }
            events.extend(std::iter::from_fn(|| c.poll_event()));
            if c.is_idle() {
                return events;
            }
            let next = [c.poll_timeout(), h.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + Duration::from_millis(10));
            now = next.max(now + Duration::from_micros(1));
            if h.poll_timeout().is_some_and(|x| x <= now) {
                h.handle_timeout(now);
            }
            c.handle_timeout(now);
        }
        panic!("the exchange did not end");
    }

    fn catalog(n: usize) -> Catalog {
        Catalog {
            generation: 7,
            entries: (0..n)
                .map(|i| CatalogEntry {
                    name: format!("images/object-{i:05}.iso"),
                    size: i as u64,
                    hash: [i as u8; 32],
                })
                .collect(),
        }
    }

    #[test]
    fn a_large_catalog_arrives_whole_through_loss() {
        let t = Instant::now();
        let origin: SocketAddr = "10.0.0.1:9100".parse().unwrap();
        let signer = crate::auth::Signer::from_seed(&[5; 32]);
        let mut h = RequestHandler::new(HandlerConfig {
            signer: Some(signer.clone()),
            ..HandlerConfig::default()
        });
        h.set_catalog(catalog(2000), Vec::new(), 1).unwrap();
        let mut cfg = RequesterConfig::new(origin, 1);
        cfg.trust = TrustedKeys::new(&[signer.public_key()]).unwrap();
        cfg.timeout = Duration::from_secs(60);
        let mut c = Requester::new(cfg);
        c.fetch_catalog(t);
        let ev = exchange(&mut c, &mut h, t, 7, &mut |_, _| {});
        assert_eq!(
            ev,
            vec![RequesterEvent::Catalog {
                catalog: catalog(2000),
                signer: Some(signer.public_key())
            }]
        );
    }

    #[test]
    fn an_unsigned_catalog_is_refused_when_keys_are_trusted() {
        let t = Instant::now();
        let origin: SocketAddr = "10.0.0.1:9100".parse().unwrap();
        let mut h = RequestHandler::new(HandlerConfig::default());
        h.set_catalog(catalog(3), Vec::new(), 1).unwrap();
        let mut cfg = RequesterConfig::new(origin, 1);
        cfg.trust =
            TrustedKeys::new(&[crate::auth::Signer::from_seed(&[5; 32]).public_key()]).unwrap();
        let mut c = Requester::new(cfg);
        c.fetch_catalog(t);
        let ev = exchange(&mut c, &mut h, t, 0, &mut |_, _| {});
        assert!(
            matches!(ev[..], [RequesterEvent::CatalogFailed { .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn requests_are_retried_through_loss_and_not_ready_until_granted() {
        let t = Instant::now();
        let origin: SocketAddr = "10.0.0.1:9100".parse().unwrap();
        let mut h = RequestHandler::new(HandlerConfig::default());
        h.set_catalog(catalog(3), vec!["late.iso".into()], 1)
            .unwrap();
        let mut c = Requester::new(RequesterConfig::new(origin, 2));
        let a = c.request(t, "images/object-00001.iso", RequestMode::Fetch);
        let b = c.request(t, "nope.iso", RequestMode::Fetch);
        let late = c.request(t, "late.iso", RequestMode::Fetch);
        let grant = Grant {
            session: 3,
            group: "239.255.0.1:9000".parse().unwrap(),
            size: 1,
            hash: [1; 32],
        };
        let ev = exchange(&mut c, &mut h, t, 3, &mut |h, name| {
            h.open_session(&name, grant)
        });
        let final_of = |id| {
            ev.iter()
                .find_map(|e| match e {
                    RequesterEvent::Answer {
                        request_id, status, ..
                    } if *request_id == id => Some(*status),
                    RequesterEvent::TimedOut { request_id, .. } if *request_id == id => {
                        Some(AnswerStatus::Busy { retry_after_ms: 0 })
                    }
                    _ => None,
                })
                .expect("an outcome")
        };
        assert_eq!(final_of(a), AnswerStatus::Granted(grant));
        assert_eq!(final_of(b), AnswerStatus::NotFound);
        // Never hashed: waited for, then given up after the timeout.
        assert!(ev.iter().any(
            |e| matches!(e, RequesterEvent::Waiting { request_id, .. } if *request_id == late)
        ));
        assert!(ev.iter().any(
            |e| matches!(e, RequesterEvent::TimedOut { request_id, .. } if *request_id == late)
        ));
    }
}
