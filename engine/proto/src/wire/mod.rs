//! Packet formats (normative spec: `docs/wire.md`).
//!
//! Every packet starts with the 10-byte common header (wire.md §2). Hot-path packets (data and
//! parity units) have zero-copy views ([`UnitPacket`]); every kind has a `*Repr` with `parse`,
//! `emit` and `buffer_len`. All fields are big-endian. Decoding never panics: after
//! [`UnitPacket::new_checked`] or a `parse` succeeds, no accessor panics, and every length and
//! index has been checked against the datagram.

mod control;
mod cursor;
mod feedback;
pub(crate) mod manifest;
pub mod origin;
mod split;
mod unit;

pub use control::{AcceptRepr, AnnounceRepr, DoneReason, DoneRepr, ManifestChunkRepr};
pub use feedback::{
    BlockRun, Holes, JoinRepr, LeaveReason, LeaveRepr, NackEntry, NackRepr, PriorityRepr,
    ReceiptRepr,
};
pub use manifest::{valid_name, Manifest, ObjectEntry, MAX_MANIFEST_LEN, MAX_NAME_LEN};
pub use split::{PlanRepr, SolicitRepr, MAX_PLAN_NEXTS, MAX_PLAN_PEERS};
pub use unit::{
    set_copy_flags, CopyFlags, UnitHeaderRepr, UnitPacket, UnitParts, UnitView, XorRepr, XOR_NONE,
    XOR_WIDTH,
};

use control::{read_signature, write_signature};
use cursor::{Reader, Writer};
use feedback::{read_nack, read_receipt, write_nack, write_receipt};
use split::{read_plan, write_plan};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First two bytes of every packet: "BC".
pub const MAGIC: u16 = 0x4243;
/// The protocol version this crate speaks (wire.md §2).
pub const VERSION: u8 = 2;
/// Length of the common header.
pub const HEADER_LEN: usize = 10;
/// Length of a data or parity unit header, common header included (wire.md §3).
pub const UNIT_HEADER_LEN: usize = HEADER_LEN + 16;
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Most stripes an Announce may name (wire.md §4): a receiver opens a socket per stripe.
pub const MAX_STRIPES: usize = 64;

/// Header flag: a data unit that is a repair (a resent original), not part of the first pass.
pub const FLAG_REPAIR: u8 = 0x01;
/// Unit flag (split mode, wire.md §2.2, §14): the member that gets this unit forwards a copy to
/// every other member of its copy cell.
pub const FLAG_COPY_ZONE: u8 = 0x02;
/// Unit flag (split mode, wire.md §2.2, §14): the member that gets this unit forwards a copy, with
/// both copy flags set, to its designated member in the next cell.
pub const FLAG_COPY_NEXT: u8 = 0x04;
/// Header flag of a sealed datagram (wire.md §2.2, §16): a closed group's opener checks and
/// clears it before parsing, so these parsers reject it (a member without the secret does).
pub const FLAG_TAGGED: u8 = 0x80;
const KNOWN_FLAGS: u8 = FLAG_REPAIR | FLAG_COPY_ZONE | FLAG_COPY_NEXT;
/// Offset of the flags byte in every packet.
const FLAGS_AT: usize = 4;

/// Why a datagram could not be decoded. Small and `Copy`: counted, never printed per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The datagram ends before a field, or the output buffer is too small.
    Truncated,
    /// The first two bytes are not [`MAGIC`].
    BadMagic,
    /// The version byte is not [`VERSION`].
    BadVersion,
    /// The kind byte names no packet kind.
    UnknownKind,
    /// A field's value is out of range, inconsistent, or bytes are left over.
    Malformed,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            WireError::Truncated => "truncated packet",
            WireError::BadMagic => "not a blockcast packet",
            WireError::BadVersion => "unsupported protocol version",
            WireError::UnknownKind => "unknown packet kind",
            WireError::Malformed => "malformed packet",
        };
        f.write_str(s)
    }
}

impl std::error::Error for WireError {}

/// One object (file or stream) of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectId(pub u32);
/// A block address: the index of a block inside its object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlockIndex(pub u32);
/// A unit's index inside its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnitIndex(pub u16);
/// A receiver's identity, chosen at random by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReceiverId(pub u64);
/// A session, chosen at random by the server; packets of other sessions are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionId(pub u32);

/// Packet kinds (wire.md §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Data = 1,
    Parity = 2,
    Announce = 3,
    Manifest = 4,
    Join = 5,
    Accept = 6,
    Leave = 7,
    Nack = 8,
    Receipt = 9,
    Priority = 10,
    Done = 11,
    Plan = 12,
    Solicit = 13,
    Xor = 14,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Kind, WireError> {
        Ok(match v {
            1 => Kind::Data,
            2 => Kind::Parity,
            3 => Kind::Announce,
            4 => Kind::Manifest,
            5 => Kind::Join,
            6 => Kind::Accept,
            7 => Kind::Leave,
            8 => Kind::Nack,
            9 => Kind::Receipt,
            10 => Kind::Priority,
            11 => Kind::Done,
            12 => Kind::Plan,
            13 => Kind::Solicit,
            14 => Kind::Xor,
            _ => return Err(WireError::UnknownKind),
        })
    }
}

/// The common header (wire.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub session: SessionId,
}

impl Header {
    /// Parses and checks the common header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header, WireError> {
        let mut r = Reader::new(bytes);
        Self::read(&mut r)
    }

    fn read(r: &mut Reader<'_>) -> Result<Header, WireError> {
        if r.u16()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        if r.u8()? != VERSION {
            return Err(WireError::BadVersion);
        }
        let kind = Kind::from_u8(r.u8()?)?;
        let flags = r.u8()?;
        let reserved = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 || reserved != 0 {
            return Err(WireError::Malformed);
        }
        let session = SessionId(r.u32()?);
        Ok(Header {
            kind,
            flags,
            session,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u16(MAGIC)?;
        w.u8(VERSION)?;
        w.u8(self.kind as u8)?;
        w.u8(self.flags)?;
        w.u8(0)?;
        w.u32(self.session.0)
    }
}

// Socket addresses (family, 16 address bytes, port; wire.md §4): shared by the announce and
// the split-mode plan, so they live here rather than in either family's module.
fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, WireError> {
    let family = r.u8()?;
    let raw: [u8; 16] = r.array()?;
    let port = r.u16()?;
    let ip = match family {
        4 => {
            if raw[4..].iter().any(|&b| b != 0) {
                return Err(WireError::Malformed);
            }
            IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        }
        6 => IpAddr::V6(Ipv6Addr::from(raw)),
        _ => return Err(WireError::Malformed),
    };
    Ok(SocketAddr::new(ip, port))
}

fn write_addr(w: &mut Writer<'_>, a: &SocketAddr) -> Result<(), WireError> {
    let mut raw = [0u8; 16];
    let family = match a.ip() {
        IpAddr::V4(v4) => {
            raw[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            raw = v6.octets();
            6
        }
    };
    w.u8(family)?;
    w.bytes(&raw)?;
    w.u16(a.port())
}

const ADDR_LEN: usize = 19;

/// Any packet, parsed (payloads borrowed from the datagram).
///
/// A signed Announce makes the enum a few hundred bytes: it lives on the stack for one
/// datagram, and boxing it would allocate per announce instead.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A data or parity unit.
    Unit(UnitHeaderRepr, &'a [u8]),
    Announce(AnnounceRepr),
    Manifest(ManifestChunkRepr<'a>),
    Join(JoinRepr),
    Accept(AcceptRepr),
    Leave(LeaveRepr),
    Nack(NackRepr),
    Receipt(ReceiptRepr),
    Priority(PriorityRepr),
    Done(DoneRepr),
    Plan(PlanRepr),
    Solicit(SolicitRepr),
    /// An XOR of original units of one block, each for a receiver that holds the others.
    Xor(XorRepr, &'a [u8]),
}

impl<'a> Packet<'a> {
    /// Parses one datagram. Never panics; every count is checked against the bytes present.
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, WireError> {
        let mut r = Reader::new(bytes);
        let h = Header::read(&mut r)?;
        if !matches!(h.kind, Kind::Data | Kind::Parity) && h.flags != 0 {
            return Err(WireError::Malformed);
        }
        let s = h.session;
        let p = match h.kind {
            Kind::Data | Kind::Parity => {
                let p = UnitPacket::new_checked(bytes)?;
                return Ok(Packet::Unit(
                    UnitHeaderRepr::from_packet(&p),
                    &bytes[UNIT_HEADER_LEN..],
                ));
            }
            Kind::Announce => Packet::Announce(AnnounceRepr::read(s, &mut r)?),
            Kind::Manifest => {
                let offset = r.u32()?;
                let chunk = r.rest();
                if chunk.is_empty() || offset as usize + chunk.len() > MAX_MANIFEST_LEN {
                    return Err(WireError::Malformed);
                }
                Packet::Manifest(ManifestChunkRepr {
                    session: s,
                    offset,
                    bytes: chunk,
                })
            }
            Kind::Join => Packet::Join(JoinRepr {
                session: s,
                receiver: ReceiverId(r.u64()?),
                cookie: r.u64()?,
            }),
            Kind::Accept => Packet::Accept(AcceptRepr {
                session: s,
                receiver: ReceiverId(r.u64()?),
                row: r.u32()?,
                cookie: r.u64()?,
            }),
            Kind::Leave => Packet::Leave(LeaveRepr {
                session: s,
                receiver: ReceiverId(r.u64()?),
                cookie: r.u64()?,
                reason: match r.u8()? {
                    0 => LeaveReason::Stopped,
                    1 => LeaveReason::Failed,
                    _ => return Err(WireError::Malformed),
                },
            }),
            Kind::Nack => Packet::Nack(read_nack(s, &mut r)?),
            Kind::Receipt => Packet::Receipt(read_receipt(s, &mut r)?),
            Kind::Priority => {
                let p = PriorityRepr {
                    session: s,
                    receiver: ReceiverId(r.u64()?),
                    cookie: r.u64()?,
                    object: ObjectId(r.u32()?),
                    block: BlockIndex(r.u32()?),
                    unit: UnitIndex(r.u16()?),
                    count: r.u32()?,
                };
                if p.count == 0 {
                    return Err(WireError::Malformed);
                }
                Packet::Priority(p)
            }
            Kind::Done => {
                let scope = r.u8()?;
                let reason = r.u8()?;
                let receiver = r.u64()?;
                let sig = match r.u8()? {
                    0 => None,
                    1 => Some(read_signature(&mut r)?),
                    _ => return Err(WireError::Malformed),
                };
                match scope {
                    0 => {
                        if receiver != 0 {
                            return Err(WireError::Malformed);
                        }
                        Packet::Done(DoneRepr::Session {
                            session: s,
                            reason: match reason {
                                0 => DoneReason::Complete,
                                1 => DoneReason::Deadline,
                                2 => DoneReason::Aborted,
                                _ => return Err(WireError::Malformed),
                            },
                            sig,
                        })
                    }
                    1 => {
                        // Only a session Done is signed (wire.md §10).
                        if reason != 0 || sig.is_some() {
                            return Err(WireError::Malformed);
                        }
                        Packet::Done(DoneRepr::Receiver {
                            session: s,
                            receiver: ReceiverId(receiver),
                        })
                    }
                    _ => return Err(WireError::Malformed),
                }
            }
            Kind::Plan => Packet::Plan(read_plan(s, &mut r)?),
            Kind::Solicit => Packet::Solicit(SolicitRepr {
                session: s,
                receiver: ReceiverId(r.u64()?),
                cookie: r.u64()?,
                zone: r.u16()?,
            }),
            Kind::Xor => {
                let object = ObjectId(r.u32()?);
                let block = BlockIndex(r.u32()?);
                let mut units = [XOR_NONE; XOR_WIDTH];
                for u in &mut units {
                    *u = r.u16()?;
                }
                let x = XorRepr {
                    session: s,
                    object,
                    block,
                    units,
                };
                if !x.is_valid() {
                    return Err(WireError::Malformed);
                }
                let payload = r.rest();
                if payload.is_empty() {
                    return Err(WireError::Truncated);
                }
                return Ok(Packet::Xor(x, payload));
            }
        };
        r.finish()?;
        Ok(p)
    }

    /// The session this packet belongs to.
    pub fn session(&self) -> SessionId {
        match self {
            Packet::Unit(h, _) => h.session,
            Packet::Announce(a) => a.session,
            Packet::Manifest(m) => m.session,
            Packet::Join(j) => j.session,
            Packet::Accept(a) => a.session,
            Packet::Leave(l) => l.session,
            Packet::Nack(n) => n.session,
            Packet::Receipt(r) => r.session,
            Packet::Priority(p) => p.session,
            Packet::Done(DoneRepr::Session { session, .. })
            | Packet::Done(DoneRepr::Receiver { session, .. }) => *session,
            Packet::Plan(p) => p.session,
            Packet::Solicit(p) => p.session,
            Packet::Xor(x, _) => x.session,
        }
    }

    /// Bytes [`Packet::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Packet::Unit(_, payload) => UNIT_HEADER_LEN + payload.len(),
            Packet::Announce(a) => a.buffer_len(),
            Packet::Manifest(m) => m.buffer_len(),
            Packet::Join(_) => HEADER_LEN + 16,
            Packet::Accept(_) => HEADER_LEN + 20,
            Packet::Leave(_) => HEADER_LEN + 17,
            Packet::Nack(n) => n.buffer_len(),
            Packet::Receipt(r) => r.buffer_len(),
            Packet::Priority(_) => HEADER_LEN + 30,
            Packet::Done(DoneRepr::Session { sig: Some(_), .. }) => {
                HEADER_LEN + 11 + crate::auth::SIGNED_LEN
            }
            Packet::Done(_) => HEADER_LEN + 11,
            Packet::Plan(p) => p.buffer_len(),
            Packet::Solicit(_) => HEADER_LEN + 18,
            Packet::Xor(_, payload) => UNIT_HEADER_LEN + payload.len(),
        }
    }

    /// Writes the packet into `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        // Units and XOR repairs: a 26-byte header, then the payload.
        let unit = match self {
            Packet::Unit(h, payload) => Some((h.emit(buf)?, payload)),
            Packet::Xor(x, payload) => Some((x.emit(buf)?, payload)),
            _ => None,
        };
        if let Some((n, payload)) = unit {
            let end = n + payload.len();
            buf.get_mut(n..end)
                .ok_or(WireError::Truncated)?
                .copy_from_slice(payload);
            return Ok(end);
        }
        let kind = match self {
            Packet::Unit(..) | Packet::Xor(..) => unreachable!("handled above"),
            Packet::Announce(_) => Kind::Announce,
            Packet::Manifest(_) => Kind::Manifest,
            Packet::Join(_) => Kind::Join,
            Packet::Accept(_) => Kind::Accept,
            Packet::Leave(_) => Kind::Leave,
            Packet::Nack(_) => Kind::Nack,
            Packet::Receipt(_) => Kind::Receipt,
            Packet::Priority(_) => Kind::Priority,
            Packet::Done(_) => Kind::Done,
            Packet::Plan(_) => Kind::Plan,
            Packet::Solicit(_) => Kind::Solicit,
        };
        let mut w = Writer::new(buf);
        Header {
            kind,
            flags: 0,
            session: self.session(),
        }
        .write(&mut w)?;
        match self {
            Packet::Unit(..) | Packet::Xor(..) => unreachable!("handled above"),
            Packet::Announce(a) => a.write(&mut w)?,
            Packet::Manifest(m) => {
                w.u32(m.offset)?;
                w.bytes(m.bytes)?;
            }
            Packet::Join(j) => {
                w.u64(j.receiver.0)?;
                w.u64(j.cookie)?;
            }
            Packet::Accept(a) => {
                w.u64(a.receiver.0)?;
                w.u32(a.row)?;
                w.u64(a.cookie)?;
            }
            Packet::Leave(l) => {
                w.u64(l.receiver.0)?;
                w.u64(l.cookie)?;
                w.u8(l.reason as u8)?;
            }
            Packet::Nack(n) => write_nack(n, &mut w)?,
            Packet::Receipt(r) => write_receipt(r, &mut w)?,
            Packet::Priority(p) => {
                w.u64(p.receiver.0)?;
                w.u64(p.cookie)?;
                w.u32(p.object.0)?;
                w.u32(p.block.0)?;
                w.u16(p.unit.0)?;
                w.u32(p.count)?;
            }
            Packet::Done(DoneRepr::Session { reason, sig, .. }) => {
                w.u8(0)?;
                w.u8(*reason as u8)?;
                w.u64(0)?;
                match sig {
                    None => w.u8(0)?,
                    Some(s) => {
                        w.u8(1)?;
                        write_signature(&mut w, s)?;
                    }
                }
            }
            Packet::Done(DoneRepr::Receiver { receiver, .. }) => {
                w.u8(1)?;
                w.u8(0)?;
                w.u64(receiver.0)?;
                w.u8(0)?;
            }
            Packet::Plan(p) => write_plan(p, &mut w)?,
            Packet::Solicit(p) => {
                w.u64(p.receiver.0)?;
                w.u64(p.cookie)?;
                w.u16(p.zone)?;
            }
        }
        Ok(w.len())
    }
}

#[cfg(test)]
mod tests;
