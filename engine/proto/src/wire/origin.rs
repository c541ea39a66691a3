//! The origin's packets (wire.md §17): a client asks an origin for an object by name, or for a
//! page of its catalog, and the origin answers. They are a family of their own: they travel
//! to and from the origin's listen address, never to a session's control address, so
//! [`Packet::parse`](super::Packet::parse) does not know their kinds (a session endpoint drops
//! them as `UnknownKind`) and [`OriginPacket::parse`] knows only them.
//!
//! No answer is longer than the datagram that asked for it: requests and catalog queries are
//! padded with zeros to at least [`MIN_REQUEST_LEN`] bytes, every answer but a catalog chunk
//! is shorter than that, and a catalog chunk is cut to the query's length. An origin cannot
//! be used to amplify a spoofed source's traffic.

use std::net::SocketAddr;

use super::control::{read_signature, write_signature};
use super::cursor::{Reader, Writer};
use super::manifest::valid_name;
use super::{read_addr, write_addr, WireError, ADDR_LEN, HEADER_LEN, MAGIC, MAX_NAME_LEN, VERSION};
use crate::auth::{Signature, SIGNED_LEN};

/// Shortest request or catalog query an origin answers: longer than any answer but a catalog
/// chunk, which is cut to the query's length (wire.md §17).
pub const MIN_REQUEST_LEN: usize = 256;
/// Largest serialized catalog (wire.md §17.5).
pub const MAX_CATALOG_LEN: usize = 64 << 20;
/// Bytes of a catalog chunk before its signature block and its catalog bytes.
pub const CHUNK_HEADER_LEN: usize = HEADER_LEN + 8 + 8 + 4 + 32 + 8 + 4 + 1;
const CATALOG_VERSION: u8 = 1;

/// Kinds of the origin family (wire.md §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OriginKind {
    Request = 15,
    Answer = 16,
    CatalogQuery = 17,
    CatalogChunk = 18,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RequestMode {
    /// Join the object's session, starting one if none is being set up or running.
    Fetch = 0,
    /// Only describe the object (size and hash); no session.
    Lookup = 1,
}

/// Client -> origin: the object named `name` (wire.md §17.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRepr {
    /// Chosen by the client (at random); the answer echoes it.
    pub request_id: u64,
    pub mode: RequestMode,
    pub name: String,
}

/// Where a granted object's session runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub session: u32,
    /// The session's multicast group and port (stripe `s` on port + `s`, §3.1).
    pub group: SocketAddr,
    pub size: u64,
    /// BLAKE3 of the object (a one-object session: what `receive --expect` pins).
    pub hash: [u8; 32],
}

/// Why an origin answers as it does (wire.md §17.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerStatus {
    /// A session for the object is being set up or running: join it.
    Granted(Grant),
    /// The object, described (a lookup).
    Found { size: u64, hash: [u8; 32] },
    /// No object of that name is in the catalog.
    NotFound,
    /// The object is in the catalog but not hashed yet: ask again after the delay.
    NotReady { retry_after_ms: u16 },
    /// No session can start now (every group of the pool is taken): ask again after the delay.
    Busy { retry_after_ms: u16 },
}

/// Origin -> client: the answer to request `request_id` (wire.md §17.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerRepr {
    pub request_id: u64,
    pub status: AnswerStatus,
}

/// Client -> origin: the catalog's bytes from `offset` (wire.md §17.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogQueryRepr {
    pub request_id: u64,
    pub offset: u32,
}

/// Origin -> client: a chunk of the current catalog (wire.md §17.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogChunkRepr<'a> {
    pub request_id: u64,
    /// Which catalog this is: greater for every change (a client restarts on a new one).
    pub generation: u64,
    /// Length of the serialized catalog (§17.5).
    pub catalog_len: u32,
    /// BLAKE3 of the serialized catalog.
    pub catalog_hash: [u8; 32],
    /// When the origin made this catalog, Unix seconds (part of the signed statement).
    pub issued: u64,
    pub offset: u32,
    /// The origin's signature of the catalog statement (§17.6), when it signs.
    pub sig: Option<Signature>,
    /// The catalog's bytes at `offset` (empty only at its end).
    pub bytes: &'a [u8],
}

impl CatalogChunkRepr<'_> {
    pub fn buffer_len(&self) -> usize {
        CHUNK_HEADER_LEN + self.sig.map_or(0, |_| SIGNED_LEN) + self.bytes.len()
    }
}

/// Any origin packet, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OriginPacket<'a> {
    Request(RequestRepr),
    Answer(AnswerRepr),
    CatalogQuery(CatalogQueryRepr),
    CatalogChunk(CatalogChunkRepr<'a>),
}

fn kind_of(v: u8) -> Result<OriginKind, WireError> {
    Ok(match v {
        15 => OriginKind::Request,
        16 => OriginKind::Answer,
        17 => OriginKind::CatalogQuery,
        18 => OriginKind::CatalogChunk,
        _ => return Err(WireError::UnknownKind),
    })
}

/// The rest of a request or query: zeros, to at least [`MIN_REQUEST_LEN`] in all.
fn check_padding(bytes: &[u8], r: &mut Reader<'_>) -> Result<(), WireError> {
    if bytes.len() < MIN_REQUEST_LEN {
        return Err(WireError::Truncated);
    }
    if r.rest().iter().any(|&b| b != 0) {
        return Err(WireError::Malformed);
    }
    Ok(())
}

impl<'a> OriginPacket<'a> {
    /// Parses one datagram of the origin family. Never panics; allocates at most the name.
    pub fn parse(bytes: &'a [u8]) -> Result<OriginPacket<'a>, WireError> {
        let mut r = Reader::new(bytes);
        if r.u16()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        if r.u8()? != VERSION {
            return Err(WireError::BadVersion);
        }
        let kind = kind_of(r.u8()?)?;
        // Flags, reserved byte and session are all zero: these packets belong to no session.
        if r.u8()? != 0 || r.u8()? != 0 || r.u32()? != 0 {
            return Err(WireError::Malformed);
        }
        let request_id = r.u64()?;
        let p = match kind {
            OriginKind::Request => {
                let mode = match r.u8()? {
                    0 => RequestMode::Fetch,
                    1 => RequestMode::Lookup,
                    _ => return Err(WireError::Malformed),
                };
                let len = usize::from(r.u16()?);
                if len == 0 || len > MAX_NAME_LEN {
                    return Err(WireError::Malformed);
                }
                let name = std::str::from_utf8(r.bytes(len)?).map_err(|_| WireError::Malformed)?;
                if !valid_name(name) {
                    return Err(WireError::Malformed);
                }
                let name = name.to_owned();
                check_padding(bytes, &mut r)?;
                return Ok(OriginPacket::Request(RequestRepr {
                    request_id,
                    mode,
                    name,
                }));
            }
            OriginKind::Answer => {
                let status = match r.u8()? {
                    0 => {
                        let session = r.u32()?;
                        let size = r.u64()?;
                        let hash = r.array()?;
                        let group = read_addr(&mut r)?;
                        if !group.ip().is_multicast() || group.port() == 0 {
                            return Err(WireError::Malformed);
                        }
                        AnswerStatus::Granted(Grant {
                            session,
                            group,
                            size,
                            hash,
                        })
                    }
                    1 => AnswerStatus::Found {
                        size: r.u64()?,
                        hash: r.array()?,
                    },
                    2 => AnswerStatus::NotFound,
                    3 => AnswerStatus::NotReady {
                        retry_after_ms: r.u16()?,
                    },
                    4 => AnswerStatus::Busy {
                        retry_after_ms: r.u16()?,
                    },
                    _ => return Err(WireError::Malformed),
                };
                OriginPacket::Answer(AnswerRepr { request_id, status })
            }
            OriginKind::CatalogQuery => {
                let offset = r.u32()?;
                check_padding(bytes, &mut r)?;
                return Ok(OriginPacket::CatalogQuery(CatalogQueryRepr {
                    request_id,
                    offset,
                }));
            }
            OriginKind::CatalogChunk => {
                let generation = r.u64()?;
                let catalog_len = r.u32()?;
                let catalog_hash = r.array()?;
                let issued = r.u64()?;
                let offset = r.u32()?;
                let sig = match r.u8()? {
                    0 => None,
                    1 => Some(read_signature(&mut r)?),
                    _ => return Err(WireError::Malformed),
                };
                let chunk = r.rest();
                let end = u64::from(offset) + chunk.len() as u64;
                if catalog_len as usize > MAX_CATALOG_LEN
                    || end > u64::from(catalog_len)
                    || (chunk.is_empty() && offset != catalog_len)
                {
                    return Err(WireError::Malformed);
                }
                return Ok(OriginPacket::CatalogChunk(CatalogChunkRepr {
                    request_id,
                    generation,
                    catalog_len,
                    catalog_hash,
                    issued,
                    offset,
                    sig,
                    bytes: chunk,
                }));
            }
        };
        r.finish()?;
        Ok(p)
    }

    /// Bytes [`OriginPacket::emit`] writes (a request or query: its padding included).
    pub fn buffer_len(&self) -> usize {
        let head = HEADER_LEN + 8;
        match self {
            OriginPacket::Request(q) => (head + 1 + 2 + q.name.len()).max(MIN_REQUEST_LEN),
            OriginPacket::Answer(a) => {
                head + 1
                    + match a.status {
                        AnswerStatus::Granted(_) => 4 + 8 + 32 + ADDR_LEN,
                        AnswerStatus::Found { .. } => 8 + 32,
                        AnswerStatus::NotFound => 0,
                        AnswerStatus::NotReady { .. } | AnswerStatus::Busy { .. } => 2,
                    }
            }
            OriginPacket::CatalogQuery(_) => MIN_REQUEST_LEN,
            OriginPacket::CatalogChunk(c) => c.buffer_len(),
        }
    }

    /// Writes the packet into `buf` (a request or query padded to [`MIN_REQUEST_LEN`]);
    /// returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.buffer_len();
        let buf = buf.get_mut(..len).ok_or(WireError::Truncated)?;
        let mut w = Writer::new(buf);
        let (kind, request_id) = match self {
            OriginPacket::Request(q) => (OriginKind::Request, q.request_id),
            OriginPacket::Answer(a) => (OriginKind::Answer, a.request_id),
            OriginPacket::CatalogQuery(q) => (OriginKind::CatalogQuery, q.request_id),
            OriginPacket::CatalogChunk(c) => (OriginKind::CatalogChunk, c.request_id),
        };
        w.u16(MAGIC)?;
        w.u8(VERSION)?;
        w.u8(kind as u8)?;
        w.u8(0)?;
        w.u8(0)?;
        w.u32(0)?;
        w.u64(request_id)?;
        match self {
            OriginPacket::Request(q) => {
                if !valid_name(&q.name) {
                    return Err(WireError::Malformed);
                }
                w.u8(q.mode as u8)?;
                w.u16(q.name.len() as u16)?;
                w.bytes(q.name.as_bytes())?;
            }
            OriginPacket::Answer(a) => match a.status {
                AnswerStatus::Granted(g) => {
                    if !g.group.ip().is_multicast() || g.group.port() == 0 {
                        return Err(WireError::Malformed);
                    }
                    w.u8(0)?;
                    w.u32(g.session)?;
                    w.u64(g.size)?;
                    w.bytes(&g.hash)?;
                    write_addr(&mut w, &g.group)?;
                }
                AnswerStatus::Found { size, hash } => {
                    w.u8(1)?;
                    w.u64(size)?;
                    w.bytes(&hash)?;
                }
                AnswerStatus::NotFound => w.u8(2)?,
                AnswerStatus::NotReady { retry_after_ms } => {
                    w.u8(3)?;
                    w.u16(retry_after_ms)?;
                }
                AnswerStatus::Busy { retry_after_ms } => {
                    w.u8(4)?;
                    w.u16(retry_after_ms)?;
                }
            },
            OriginPacket::CatalogQuery(q) => w.u32(q.offset)?,
            OriginPacket::CatalogChunk(c) => {
                let end = u64::from(c.offset) + c.bytes.len() as u64;
                if c.catalog_len as usize > MAX_CATALOG_LEN || end > u64::from(c.catalog_len) {
                    return Err(WireError::Malformed);
                }
                w.u64(c.generation)?;
                w.u32(c.catalog_len)?;
                w.bytes(&c.catalog_hash)?;
                w.u64(c.issued)?;
                w.u32(c.offset)?;
                match &c.sig {
                    None => w.u8(0)?,
                    Some(s) => {
                        w.u8(1)?;
                        write_signature(&mut w, s)?;
                    }
                }
                w.bytes(c.bytes)?;
            }
        }
        // The padding of a request or query: the buffer's rest, zeroed.
        let written = w.len();
        buf[written..].fill(0);
        Ok(len)
    }
}

/// One object of a catalog (wire.md §17.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The name clients ask for: a relative path (as an object name, §5.1).
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the object.
    pub hash: [u8; 32],
}

/// What an origin offers: its objects by name, sorted, each name once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Greater for every change.
    pub generation: u64,
    pub entries: Vec<CatalogEntry>,
}

impl Catalog {
    pub fn buffer_len(&self) -> usize {
        1 + 8
            + 4
            + self
                .entries
                .iter()
                .map(|e| 2 + e.name.len() + 8 + 32)
                .sum::<usize>()
    }

    /// Serializes the catalog (entries must be sorted by name, each name once).
    pub fn emit(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![0u8; self.buffer_len()];
        if out.len() > MAX_CATALOG_LEN {
            return Err(WireError::Malformed);
        }
        let mut w = Writer::new(&mut out);
        w.u8(CATALOG_VERSION)?;
        w.u64(self.generation)?;
        w.u32(u32::try_from(self.entries.len()).map_err(|_| WireError::Malformed)?)?;
        let mut last: Option<&str> = None;
        for e in &self.entries {
            if !valid_name(&e.name) || last.is_some_and(|l| l >= e.name.as_str()) {
                return Err(WireError::Malformed);
            }
            last = Some(&e.name);
            w.u16(e.name.len() as u16)?;
            w.bytes(e.name.as_bytes())?;
            w.u64(e.size)?;
            w.bytes(&e.hash)?;
        }
        Ok(out)
    }

    /// Parses and validates a catalog: names valid, sorted, each once.
    pub fn parse(bytes: &[u8]) -> Result<Catalog, WireError> {
        if bytes.len() > MAX_CATALOG_LEN {
            return Err(WireError::Malformed);
        }
        let mut r = Reader::new(bytes);
        if r.u8()? != CATALOG_VERSION {
            return Err(WireError::BadVersion);
        }
        let generation = r.u64()?;
        let count = r.u32()? as usize;
        // Each entry takes at least 43 bytes: reject counts that cannot fit before allocating.
        if count.saturating_mul(43) > r.remaining() {
            return Err(WireError::Malformed);
        }
        let mut entries: Vec<CatalogEntry> = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.bytes(len)?).map_err(|_| WireError::Malformed)?;
            if !valid_name(name) || entries.last().is_some_and(|l| l.name.as_str() >= name) {
                return Err(WireError::Malformed);
            }
            let name = name.to_owned();
            entries.push(CatalogEntry {
                name,
                size: r.u64()?,
                hash: r.array()?,
            });
        }
        r.finish()?;
        Ok(Catalog {
            generation,
            entries,
        })
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-z0-9_-]{1,12}(/[a-zA-Z0-9._-]{1,8}){0,2}".prop_filter("a valid name", |n| valid_name(n))
    }

    fn arb_group() -> impl Strategy<Value = SocketAddr> {
        (224u8..240, any::<[u8; 3]>(), 1u16..)
            .prop_map(|(a, r, p)| SocketAddr::from(([a, r[0], r[1], r[2]], p)))
    }

    fn arb_status() -> impl Strategy<Value = AnswerStatus> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<[u8; 32]>(), arb_group()).prop_map(
                |(session, size, hash, group)| AnswerStatus::Granted(Grant {
                    session,
                    group,
                    size,
                    hash
                })
            ),
            (any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(size, hash)| AnswerStatus::Found { size, hash }),
            Just(AnswerStatus::NotFound),
            any::<u16>().prop_map(|retry_after_ms| AnswerStatus::NotReady { retry_after_ms }),
            any::<u16>().prop_map(|retry_after_ms| AnswerStatus::Busy { retry_after_ms }),
        ]
    }

    fn arb_catalog() -> impl Strategy<Value = Catalog> {
        (
            any::<u64>(),
            proptest::collection::btree_map(arb_name(), (any::<u64>(), any::<[u8; 32]>()), 0..6),
        )
            .prop_map(|(generation, m)| Catalog {
                generation,
                entries: m
                    .into_iter()
                    .map(|(name, (size, hash))| CatalogEntry { name, size, hash })
                    .collect(),
            })
    }

    fn round_trip(p: &OriginPacket<'_>) {
        let mut buf = vec![0xAAu8; p.buffer_len() + 8];
        let n = p.emit(&mut buf).expect("emit");
        assert_eq!(n, p.buffer_len());
        assert_eq!(&OriginPacket::parse(&buf[..n]).expect("parse"), p);
        // Neither family takes the other's packets.
        assert!(crate::wire::Packet::parse(&buf[..n]).is_err());
    }

    proptest! {
        #[test]
        fn requests_round_trip(id in any::<u64>(), lookup in any::<bool>(), name in arb_name()) {
            let mode = if lookup { RequestMode::Lookup } else { RequestMode::Fetch };
            round_trip(&OriginPacket::Request(RequestRepr { request_id: id, mode, name }));
        }

        #[test]
        fn answers_round_trip_and_are_shorter_than_any_request(id in any::<u64>(), status in arb_status()) {
            let p = OriginPacket::Answer(AnswerRepr { request_id: id, status });
            prop_assert!(p.buffer_len() < MIN_REQUEST_LEN);
            round_trip(&p);
        }

        #[test]
        fn catalog_chunks_round_trip(
            id in any::<u64>(),
            generation in any::<u64>(),
            hash in any::<[u8; 32]>(),
            issued in any::<u64>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            before in 0u32..1000,
            after in 0u32..1000,
            signed in any::<bool>(),
        ) {
            let sig = signed.then_some(Signature { key: [7; 32], sig: [9; 64] });
            // An empty chunk only at the catalog's end.
            let after = if bytes.is_empty() { 0 } else { after };
            let p = OriginPacket::CatalogChunk(CatalogChunkRepr {
                request_id: id,
                generation,
                catalog_len: before + bytes.len() as u32 + after,
                catalog_hash: hash,
                issued,
                offset: before,
                sig,
                bytes: &bytes,
            });
            round_trip(&p);
            round_trip(&OriginPacket::CatalogQuery(CatalogQueryRepr { request_id: id, offset: before }));
        }

        #[test]
        fn catalogs_round_trip(c in arb_catalog()) {
            let bytes = c.emit().expect("emit");
            prop_assert_eq!(bytes.len(), c.buffer_len());
            prop_assert_eq!(Catalog::parse(&bytes).expect("parse"), c);
        }

        #[test]
        fn parse_never_panics(kind in 15u8..=18, tail in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut bytes = vec![0x42, 0x43, VERSION, kind, 0, 0, 0, 0, 0, 0];
            bytes.extend_from_slice(&tail);
            let _ = OriginPacket::parse(&bytes);
            let _ = Catalog::parse(&tail);
        }
    }

    #[test]
    fn a_request_shorter_than_the_minimum_is_not_answered() {
        let q = OriginPacket::Request(RequestRepr {
            request_id: 1,
            mode: RequestMode::Fetch,
            name: "a.iso".into(),
        });
        let mut buf = [0u8; 512];
        let n = q.emit(&mut buf).unwrap();
        assert_eq!(n, MIN_REQUEST_LEN);
        assert_eq!(
            OriginPacket::parse(&buf[..n - 1]),
            Err(WireError::Truncated)
        );
        // Longer padding is fine; padding that is not zero is not.
        assert!(OriginPacket::parse(&buf[..n + 100]).is_ok());
        buf[n - 1] = 1;
        assert_eq!(OriginPacket::parse(&buf[..n]), Err(WireError::Malformed));
    }

    #[test]
    fn unsafe_or_empty_names_and_session_packets_are_refused() {
        for name in ["../etc/passwd", "/abs", "a//b", "a/./b"] {
            let mut buf = [0u8; MIN_REQUEST_LEN];
            let mut w = Writer::new(&mut buf);
            for b in [0x42, 0x43, VERSION, 15, 0, 0, 0, 0, 0, 0] {
                w.u8(b).unwrap();
            }
            w.u64(1).unwrap();
            w.u8(0).unwrap();
            w.u16(name.len() as u16).unwrap();
            w.bytes(name.as_bytes()).unwrap();
            assert_eq!(
                OriginPacket::parse(&buf),
                Err(WireError::Malformed),
                "{name}"
            );
        }
        // A session's packet (kind 5, a Join) is not of this family.
        let mut join = [0u8; 26];
        join[..4].copy_from_slice(&[0x42, 0x43, VERSION, 5]);
        assert_eq!(OriginPacket::parse(&join), Err(WireError::UnknownKind));
        // A request naming a session is refused.
        let q = OriginPacket::Request(RequestRepr {
            request_id: 1,
            mode: RequestMode::Fetch,
            name: "a".into(),
        });
        let mut buf = [0u8; MIN_REQUEST_LEN];
        q.emit(&mut buf).unwrap();
        buf[9] = 1;
        assert_eq!(OriginPacket::parse(&buf), Err(WireError::Malformed));
    }

    #[test]
    fn a_grant_names_a_multicast_group() {
        let a = OriginPacket::Answer(AnswerRepr {
            request_id: 1,
            status: AnswerStatus::Granted(Grant {
                session: 3,
                group: "10.0.0.1:9000".parse().unwrap(),
                size: 1,
                hash: [0; 32],
            }),
        });
        assert_eq!(a.emit(&mut [0u8; 256]), Err(WireError::Malformed));
    }

    #[test]
    fn catalogs_must_be_sorted_and_their_counts_fit() {
        let e = |n: &str| CatalogEntry {
            name: n.into(),
            size: 1,
            hash: [0; 32],
        };
        let unsorted = Catalog {
            generation: 1,
            entries: vec![e("b"), e("a")],
        };
        assert_eq!(unsorted.emit(), Err(WireError::Malformed));
        let twice = Catalog {
            generation: 1,
            entries: vec![e("a"), e("a")],
        };
        assert_eq!(twice.emit(), Err(WireError::Malformed));
        let ok = Catalog {
            generation: 1,
            entries: vec![e("a"), e("b/c")],
        };
        let mut bytes = ok.emit().unwrap();
        assert_eq!(Catalog::parse(&bytes).unwrap().get("b/c"), Some(&e("b/c")));
        // A count larger than the bytes can hold is refused before anything is allocated.
        bytes[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Catalog::parse(&bytes), Err(WireError::Malformed));
    }
}
