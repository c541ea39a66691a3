//! Packet formats (normative spec: `docs/wire.md`).
//!
//! Every packet starts with the 10-byte common header (wire.md §2). Hot-path packets (data and
//! parity units) have zero-copy views ([`UnitPacket`]); every kind has a `*Repr` with `parse`,
//! `emit` and `buffer_len`. All fields are big-endian. Decoding never panics: after
//! [`UnitPacket::new_checked`] or a `parse` succeeds, no accessor panics, and every length and
//! index has been checked against the datagram.

mod cursor;
pub(crate) mod manifest;

pub use manifest::{Manifest, ObjectEntry, MAX_MANIFEST_LEN, MAX_NAME_LEN};

use cursor::{Reader, Writer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// First two bytes of every packet: "BC".
pub const MAGIC: u16 = 0x4243;
/// The protocol version this crate speaks (wire.md §2).
pub const VERSION: u8 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 10;
/// Length of a data or parity unit header, common header included (wire.md §3).
pub const UNIT_HEADER_LEN: usize = HEADER_LEN + 16;
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// Header flag: a data unit that is a repair (a resent original), not part of the first pass.
pub const FLAG_REPAIR: u8 = 0x01;
/// Unit flag (split mode, wire.md §2.2, §14): the member that gets this unit forwards a copy to
/// every other member of its copy cell.
pub const FLAG_COPY_ZONE: u8 = 0x02;
/// Unit flag (split mode, wire.md §2.2, §14): the member that gets this unit forwards a copy, with
/// both copy flags set, to its designated member in the next cell.
pub const FLAG_COPY_NEXT: u8 = 0x04;
/// Header flag reserved for an authentication trailer (wire.md §2.2); v1 rejects it.
pub const FLAG_TAGGED: u8 = 0x80;
const KNOWN_FLAGS: u8 = FLAG_REPAIR | FLAG_COPY_ZONE | FLAG_COPY_NEXT;
/// Offset of the flags byte in every packet.
const FLAGS_AT: usize = 4;

/// Where copies of a unit go (split mode, wire.md §2.2, §14): its copy flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CopyFlags {
    /// Forward to every other member of my copy cell.
    pub zone: bool,
    /// Forward to my designated member in the next cell (that copy carries both flags).
    pub next: bool,
}

impl CopyFlags {
    /// No copies: what multicast units and copies to cell peers carry.
    pub const NONE: CopyFlags = CopyFlags {
        zone: false,
        next: false,
    };
    /// Spread everywhere: what the server's units and copies to the next cell carry.
    pub const ALL: CopyFlags = CopyFlags {
        zone: true,
        next: true,
    };

    fn bits(self) -> u8 {
        (if self.zone { FLAG_COPY_ZONE } else { 0 }) | (if self.next { FLAG_COPY_NEXT } else { 0 })
    }

    fn from_bits(flags: u8) -> Self {
        CopyFlags {
            zone: flags & FLAG_COPY_ZONE != 0,
            next: flags & FLAG_COPY_NEXT != 0,
        }
    }

    /// Any copy to make.
    pub fn any(self) -> bool {
        self.zone || self.next
    }
}

/// Rewrites the copy flags of the data or parity unit at the start of `datagram` in place
/// (the other flags are kept), as the server does before sending a unit to its owner and a
/// member does before forwarding it (wire.md §14).
///
/// Fails, changing nothing, if `datagram` does not start with a unit's common header.
pub fn set_copy_flags(datagram: &mut [u8], copy: CopyFlags) -> Result<(), WireError> {
    let h = Header::parse(datagram)?;
    if !matches!(h.kind, Kind::Data | Kind::Parity) {
        return Err(WireError::UnknownKind);
    }
    let f = &mut datagram[FLAGS_AT];
    *f = (*f & !(FLAG_COPY_ZONE | FLAG_COPY_NEXT)) | copy.bits();
    Ok(())
}

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

/// Byte ranges of the unit header fields after the common header (wire.md §3).
mod field {
    use core::ops::Range;
    pub const OBJECT: Range<usize> = 10..14;
    pub const BLOCK: Range<usize> = 14..18;
    pub const INDEX: Range<usize> = 18..20;
    pub const ROUND_END: Range<usize> = 20..22;
    pub const TIMESTAMP: Range<usize> = 22..26;
}

/// A zero-copy view of a data or parity unit (wire.md §3).
///
/// After [`UnitPacket::new_checked`] succeeds, no accessor panics.
#[derive(Clone, Copy, Debug)]
pub struct UnitPacket<T: AsRef<[u8]>> {
    buf: T,
    header: Header,
}

impl<T: AsRef<[u8]>> UnitPacket<T> {
    /// Checks the common header, the kind (data or parity) and the length.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let bytes = buf.as_ref();
        let header = Header::parse(bytes)?;
        if !matches!(header.kind, Kind::Data | Kind::Parity) {
            return Err(WireError::UnknownKind);
        }
        if bytes.len() < UNIT_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = UnitPacket { buf, header };
        if p.is_parity() {
            if p.index() >= p.round_end() || p.header.flags & FLAG_REPAIR != 0 {
                return Err(WireError::Malformed);
            }
        } else if p.round_end() != 0 {
            return Err(WireError::Malformed);
        }
        if p.payload().is_empty() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    fn be16(&self, r: core::ops::Range<usize>) -> u16 {
        let b = &self.buf.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn be32(&self, r: core::ops::Range<usize>) -> u32 {
        let b = &self.buf.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn header(&self) -> Header {
        self.header
    }
    pub fn session(&self) -> SessionId {
        self.header.session
    }
    pub fn is_parity(&self) -> bool {
        self.header.kind == Kind::Parity
    }
    /// True for a data unit resent as a repair.
    pub fn is_repair(&self) -> bool {
        self.header.flags & FLAG_REPAIR != 0
    }
    /// Where copies of this unit go (split mode; none on a multicast unit).
    pub fn copy_flags(&self) -> CopyFlags {
        CopyFlags::from_bits(self.header.flags)
    }
    pub fn object(&self) -> ObjectId {
        ObjectId(self.be32(field::OBJECT))
    }
    pub fn block(&self) -> BlockIndex {
        BlockIndex(self.be32(field::BLOCK))
    }
    /// Unit index for data; parity index for parity units.
    pub fn index(&self) -> u16 {
        self.be16(field::INDEX)
    }
    /// Parity: the end (exclusive) of the parity indices of this repair round; 0 for data.
    pub fn round_end(&self) -> u16 {
        self.be16(field::ROUND_END)
    }
    /// The server's send time in microseconds since the session started (wraps).
    pub fn timestamp(&self) -> u32 {
        self.be32(field::TIMESTAMP)
    }
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[UNIT_HEADER_LEN..]
    }
}

/// The parsed header of a data or parity unit; the payload travels separately (it is sent
/// straight from the source, wire.md §3).
///
/// The copy flags of split mode are routing, not content, and are not part of it: `emit`
/// writes none; set them with [`set_copy_flags`] and read them with [`UnitPacket::copy_flags`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitHeaderRepr {
    pub session: SessionId,
    pub parity: bool,
    pub repair: bool,
    pub object: ObjectId,
    pub block: BlockIndex,
    pub index: u16,
    pub round_end: u16,
    pub timestamp: u32,
}

impl UnitHeaderRepr {
    /// Writes the unit header into `buf[..UNIT_HEADER_LEN]`; the payload follows it.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        let kind = if self.parity {
            Kind::Parity
        } else {
            Kind::Data
        };
        let flags = if self.repair { FLAG_REPAIR } else { 0 };
        Header {
            kind,
            flags,
            session: self.session,
        }
        .write(&mut w)?;
        w.u32(self.object.0)?;
        w.u32(self.block.0)?;
        w.u16(self.index)?;
        w.u16(self.round_end)?;
        w.u32(self.timestamp)?;
        Ok(w.len())
    }

    pub fn from_packet<T: AsRef<[u8]>>(p: &UnitPacket<T>) -> Self {
        UnitHeaderRepr {
            session: p.session(),
            parity: p.is_parity(),
            repair: p.is_repair(),
            object: p.object(),
            block: p.block(),
            index: p.index(),
            round_end: p.round_end(),
            timestamp: p.timestamp(),
        }
    }
}

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

/// Session summary, repeated by the server so late joiners can start (wire.md §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRepr {
    pub session: SessionId,
    /// Where receivers send joins, NACKs, receipt notices and priority requests.
    pub control: SocketAddr,
    pub unit_size: u16,
    pub units_per_block: u16,
    /// Parity units the code can make per block (the decoder needs it).
    pub max_parity: u16,
    pub stripes: u16,
    pub object_count: u32,
    pub total_bytes: u64,
    pub manifest_len: u32,
    pub manifest_hash: [u8; 32],
    /// The server's estimate of the group size (accepted receivers), for NACK backoff.
    pub group_size: u32,
    /// The server's group round-trip time estimate, microseconds.
    pub grtt_us: u32,
    /// Where the first pass is: the next (object, block) it will send; `object == u32::MAX`
    /// once the first pass is over.
    pub pass_object: ObjectId,
    pub pass_block: BlockIndex,
    pub timestamp: u32,
}

impl AnnounceRepr {
    pub const LEN: usize = HEADER_LEN + ADDR_LEN + 2 * 4 + 4 + 8 + 4 + 32 + 4 + 4 + 4 + 4 + 4;

    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    fn read(session: SessionId, r: &mut Reader<'_>) -> Result<Self, WireError> {
        let a = AnnounceRepr {
            session,
            control: read_addr(r)?,
            unit_size: r.u16()?,
            units_per_block: r.u16()?,
            max_parity: r.u16()?,
            stripes: r.u16()?,
            object_count: r.u32()?,
            total_bytes: r.u64()?,
            manifest_len: r.u32()?,
            manifest_hash: r.array()?,
            group_size: r.u32()?,
            grtt_us: r.u32()?,
            pass_object: ObjectId(r.u32()?),
            pass_block: BlockIndex(r.u32()?),
            timestamp: r.u32()?,
        };
        let control_ok = a.control.port() != 0
            && !a.control.ip().is_unspecified()
            && !a.control.ip().is_multicast();
        if !control_ok
            || a.unit_size < 2
            || a.unit_size % 2 != 0
            || usize::from(a.unit_size) + UNIT_HEADER_LEN > MAX_DATAGRAM
            || a.units_per_block == 0
            || a.units_per_block > 32_768
            || a.max_parity == 0
            || a.max_parity > 32_768
            || a.stripes == 0
            || a.manifest_len == 0
            || a.manifest_len as usize > MAX_MANIFEST_LEN
        {
            return Err(WireError::Malformed);
        }
        Ok(a)
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        write_addr(w, &self.control)?;
        w.u16(self.unit_size)?;
        w.u16(self.units_per_block)?;
        w.u16(self.max_parity)?;
        w.u16(self.stripes)?;
        w.u32(self.object_count)?;
        w.u64(self.total_bytes)?;
        w.u32(self.manifest_len)?;
        w.bytes(&self.manifest_hash)?;
        w.u32(self.group_size)?;
        w.u32(self.grtt_us)?;
        w.u32(self.pass_object.0)?;
        w.u32(self.pass_block.0)?;
        w.u32(self.timestamp)
    }

    /// Bytes in one block.
    pub fn block_size(&self) -> u64 {
        u64::from(self.unit_size) * u64::from(self.units_per_block)
    }
}

/// One chunk of the serialized manifest (wire.md §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestChunkRepr<'a> {
    pub session: SessionId,
    /// Byte offset of this chunk in the manifest.
    pub offset: u32,
    pub bytes: &'a [u8],
}

impl ManifestChunkRepr<'_> {
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 4 + self.bytes.len()
    }
}

/// Receiver -> server: please count me in (wire.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
}

/// Server -> receiver: you are in; `row` is your row in the status matrix (wire.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    pub row: u32,
}

/// Why a receiver leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LeaveReason {
    /// Asked to stop (Ctrl-C, shutdown).
    Stopped = 0,
    /// A local failure (disk full, cannot write).
    Failed = 1,
}

/// Receiver -> server: I am leaving (wire.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaveRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    pub reason: LeaveReason,
}

/// Which units of a block a receiver misses (wire.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holes {
    /// Runs of missing units: (first unit, count).
    Ranges(Vec<(u16, u16)>),
    /// Bit `i` (MSB first in each byte) set = unit `i` is missing.
    Bitmap(Vec<u8>),
}

impl Holes {
    fn buffer_len(&self) -> usize {
        3 + match self {
            Holes::Ranges(r) => 4 * r.len(),
            Holes::Bitmap(b) => b.len(),
        }
    }

    /// Iterates the missing unit indices described.
    pub fn units(&self) -> Box<dyn Iterator<Item = u16> + '_> {
        match self {
            Holes::Ranges(r) => {
                Box::new(r.iter().flat_map(|&(s, n)| {
                    (u32::from(s)..u32::from(s) + u32::from(n)).map(|u| u as u16)
                }))
            }
            Holes::Bitmap(b) => Box::new(
                (0..b.len() * 8)
                    .filter(move |i| b[i / 8] & (0x80 >> (i % 8)) != 0)
                    .map(|i| i as u16),
            ),
        }
    }
}

/// One block's entry in a NACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackEntry {
    pub object: ObjectId,
    pub block: BlockIndex,
    /// How many more units (data or parity) the receiver needs to rebuild the block.
    pub missing: u16,
    /// The receiver has seen parity indices below this for the block (so the server does not
    /// send again what is already on its way).
    pub parity_seen: u16,
    pub holes: Holes,
}

impl NackEntry {
    fn buffer_len(&self) -> usize {
        12 + self.holes.buffer_len()
    }
}

/// Receiver -> server: blocks with missing units (wire.md §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    pub entries: Vec<NackEntry>,
}

impl NackRepr {
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + 8
            + 2
            + self
                .entries
                .iter()
                .map(NackEntry::buffer_len)
                .sum::<usize>()
    }

    /// Bytes one more entry would add.
    pub fn entry_len(entry: &NackEntry) -> usize {
        entry.buffer_len()
    }
}

/// A run of verified blocks in a receipt notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRun {
    pub object: ObjectId,
    pub start: BlockIndex,
    pub len: u32,
}

/// Receiver -> server: receive-status summary and echoed timestamp (wire.md §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    /// Every object is whole and verified.
    pub complete: bool,
    /// The latest server timestamp the receiver saw, echoed.
    pub echo_timestamp: u32,
    /// Microseconds between receiving that timestamp and sending this notice.
    pub echo_delay_us: u32,
    /// Loss the receiver measured since its last notice, parts per million.
    pub loss_ppm: u32,
    /// Datagrams the receiver's own socket dropped for lack of buffer space since its last
    /// notice, per million datagrams that reached it: congestion at the receiver (the sender
    /// is too fast for it), as opposed to loss on the way.
    pub overflow_ppm: u32,
    /// The fullest its socket's receive buffer was found since its last notice, per million
    /// of the buffer: a queue that fills warns of overflow before any datagram is dropped.
    pub queue_ppm: u32,
    /// Verified-block watermark: every block before (object, block) in manifest order is
    /// verified.
    pub watermark_object: ObjectId,
    pub watermark_block: BlockIndex,
    /// Verified blocks in all.
    pub blocks_done: u64,
    /// Runs of verified blocks past the watermark (as many as fit).
    pub runs: Vec<BlockRun>,
}

impl ReceiptRepr {
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 8 + 1 + 4 * 7 + 8 + 2 + 12 * self.runs.len()
    }
}

/// Receiver -> server: send these blocks next (wire.md §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorityRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    pub object: ObjectId,
    pub block: BlockIndex,
    pub unit: UnitIndex,
    /// How many blocks from `block` on.
    pub count: u32,
}

/// What a done packet says (wire.md §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoneRepr {
    /// Server -> group: the session is over.
    Session {
        session: SessionId,
        reason: DoneReason,
    },
    /// Server -> receiver: your completion is recorded; stop reporting.
    Receiver {
        session: SessionId,
        receiver: ReceiverId,
    },
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DoneReason {
    /// Every accepted receiver holds every block.
    Complete = 0,
    /// The deadline passed first.
    Deadline = 1,
    /// The server was stopped.
    Aborted = 2,
}

/// Any packet, parsed (payloads borrowed from the datagram).
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

/// Most units one XOR repair combines (wire.md §3.2): four slots of the unit header.
pub const XOR_WIDTH: usize = 4;
/// An unused slot of an XOR repair's unit list.
pub const XOR_NONE: u16 = 0xFFFF;

/// Server -> group: the XOR of original units of one block, each zero-padded to the unit
/// size (wire.md §3.2). A receiver that holds all but one of `units` rebuilds that one; one
/// datagram repairs a different unit at each of up to four receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XorRepr {
    pub session: SessionId,
    pub object: ObjectId,
    pub block: BlockIndex,
    /// Ascending unit indices; unused slots at the end are [`XOR_NONE`]; at least two used.
    pub units: [u16; XOR_WIDTH],
}

impl XorRepr {
    /// The unit indices combined.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.units.iter().copied().take_while(|&u| u != XOR_NONE)
    }

    /// Whether the list is well formed: two to four ascending indices, then unused slots.
    pub fn is_valid(&self) -> bool {
        let used = self.iter().count();
        used >= 2
            && self.units[used..].iter().all(|&u| u == XOR_NONE)
            && self.units[..used].windows(2).all(|w| w[0] < w[1])
    }

    /// Writes the header (the same 26 bytes as a unit's, wire.md §3.2); the payload follows.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::new(buf);
        Header {
            kind: Kind::Xor,
            flags: 0,
            session: self.session,
        }
        .write(&mut w)?;
        w.u32(self.object.0)?;
        w.u32(self.block.0)?;
        for u in self.units {
            w.u16(u)?;
        }
        Ok(w.len())
    }
}

/// Bounds on what a single datagram may claim (wire.md §7, §8).
const MAX_NACK_ENTRIES: usize = 4096;

/// Most cell peers one plan names (wire.md §13.1): a plan then fits a 1500-byte MTU.
pub const MAX_PLAN_PEERS: usize = 63;

/// Server -> member (split mode): where this member forwards copies (wire.md §13.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRepr {
    pub session: SessionId,
    /// The member this plan is for.
    pub receiver: ReceiverId,
    /// Plans are numbered; a member keeps the newest (higher epoch) it has seen.
    pub epoch: u32,
    /// The member's zone, as it asked.
    pub zone: u16,
    /// Its designated member in the next cell, if there is a next cell.
    pub next: Option<SocketAddr>,
    /// The other members of its copy cell (at most [`MAX_PLAN_PEERS`]).
    pub peers: Vec<SocketAddr>,
}

impl PlanRepr {
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + 8
            + 4
            + 2
            + 1
            + self.next.map_or(0, |_| ADDR_LEN)
            + 2
            + ADDR_LEN * self.peers.len()
    }
}

/// Member -> server (split mode, before the manifest): send me the announce and the
/// manifest by unicast; I am in `zone` (wire.md §13.2). Session 0 asks for any session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SolicitRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    pub zone: u16,
}

/// A member address in a plan: a unicast address with a port.
fn peer_addr_ok(a: &SocketAddr) -> bool {
    a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
}

fn read_plan(session: SessionId, r: &mut Reader<'_>) -> Result<PlanRepr, WireError> {
    let receiver = ReceiverId(r.u64()?);
    let epoch = r.u32()?;
    let zone = r.u16()?;
    let next = match r.u8()? {
        0 => None,
        1 => Some(read_addr(r)?),
        _ => return Err(WireError::Malformed),
    };
    let count = usize::from(r.u16()?);
    if count > MAX_PLAN_PEERS || count * ADDR_LEN != r.remaining() {
        return Err(WireError::Malformed);
    }
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        peers.push(read_addr(r)?);
    }
    if !next.iter().chain(peers.iter()).all(peer_addr_ok) {
        return Err(WireError::Malformed);
    }
    Ok(PlanRepr {
        session,
        receiver,
        epoch,
        zone,
        next,
        peers,
    })
}

fn write_plan(p: &PlanRepr, w: &mut Writer<'_>) -> Result<(), WireError> {
    if p.peers.len() > MAX_PLAN_PEERS || !p.next.iter().chain(p.peers.iter()).all(peer_addr_ok) {
        return Err(WireError::Malformed);
    }
    w.u64(p.receiver.0)?;
    w.u32(p.epoch)?;
    w.u16(p.zone)?;
    match &p.next {
        None => w.u8(0)?,
        Some(a) => {
            w.u8(1)?;
            write_addr(w, a)?;
        }
    }
    w.u16(p.peers.len() as u16)?;
    for a in &p.peers {
        write_addr(w, a)?;
    }
    Ok(())
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
            }),
            Kind::Accept => Packet::Accept(AcceptRepr {
                session: s,
                receiver: ReceiverId(r.u64()?),
                row: r.u32()?,
            }),
            Kind::Leave => Packet::Leave(LeaveRepr {
                session: s,
                receiver: ReceiverId(r.u64()?),
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
                        })
                    }
                    1 => {
                        if reason != 0 {
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
            Packet::Join(_) => HEADER_LEN + 8,
            Packet::Accept(_) => HEADER_LEN + 12,
            Packet::Leave(_) => HEADER_LEN + 9,
            Packet::Nack(n) => n.buffer_len(),
            Packet::Receipt(r) => r.buffer_len(),
            Packet::Priority(_) => HEADER_LEN + 22,
            Packet::Done(_) => HEADER_LEN + 10,
            Packet::Plan(p) => p.buffer_len(),
            Packet::Solicit(_) => HEADER_LEN + 10,
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
            Packet::Join(j) => w.u64(j.receiver.0)?,
            Packet::Accept(a) => {
                w.u64(a.receiver.0)?;
                w.u32(a.row)?;
            }
            Packet::Leave(l) => {
                w.u64(l.receiver.0)?;
                w.u8(l.reason as u8)?;
            }
            Packet::Nack(n) => write_nack(n, &mut w)?,
            Packet::Receipt(r) => write_receipt(r, &mut w)?,
            Packet::Priority(p) => {
                w.u64(p.receiver.0)?;
                w.u32(p.object.0)?;
                w.u32(p.block.0)?;
                w.u16(p.unit.0)?;
                w.u32(p.count)?;
            }
            Packet::Done(DoneRepr::Session { reason, .. }) => {
                w.u8(0)?;
                w.u8(*reason as u8)?;
                w.u64(0)?;
            }
            Packet::Done(DoneRepr::Receiver { receiver, .. }) => {
                w.u8(1)?;
                w.u8(0)?;
                w.u64(receiver.0)?;
            }
            Packet::Plan(p) => write_plan(p, &mut w)?,
            Packet::Solicit(p) => {
                w.u64(p.receiver.0)?;
                w.u16(p.zone)?;
            }
        }
        Ok(w.len())
    }
}

fn read_nack(session: SessionId, r: &mut Reader<'_>) -> Result<NackRepr, WireError> {
    let receiver = ReceiverId(r.u64()?);
    let count = usize::from(r.u16()?);
    // Each entry takes at least 15 bytes: a count that cannot fit is rejected before allocating.
    if count == 0 || count > MAX_NACK_ENTRIES || count * 15 > r.remaining() {
        return Err(WireError::Malformed);
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let object = ObjectId(r.u32()?);
        let block = BlockIndex(r.u32()?);
        let missing = r.u16()?;
        let parity_seen = r.u16()?;
        let encoding = r.u8()?;
        let len = usize::from(r.u16()?);
        let holes = match encoding {
            0 => {
                let raw = r.bytes(len.checked_mul(4).ok_or(WireError::Malformed)?)?;
                let mut ranges = Vec::with_capacity(len);
                for c in raw.chunks_exact(4) {
                    let start = u16::from_be_bytes([c[0], c[1]]);
                    let n = u16::from_be_bytes([c[2], c[3]]);
                    if n == 0 || u32::from(start) + u32::from(n) > 65_536 {
                        return Err(WireError::Malformed);
                    }
                    ranges.push((start, n));
                }
                Holes::Ranges(ranges)
            }
            1 => {
                if len > 8192 {
                    return Err(WireError::Malformed);
                }
                Holes::Bitmap(r.bytes(len)?.to_vec())
            }
            _ => return Err(WireError::Malformed),
        };
        if missing == 0 {
            return Err(WireError::Malformed);
        }
        entries.push(NackEntry {
            object,
            block,
            missing,
            parity_seen,
            holes,
        });
    }
    Ok(NackRepr {
        session,
        receiver,
        entries,
    })
}

fn write_nack(n: &NackRepr, w: &mut Writer<'_>) -> Result<(), WireError> {
    if n.entries.is_empty() || n.entries.len() > MAX_NACK_ENTRIES {
        return Err(WireError::Malformed);
    }
    w.u64(n.receiver.0)?;
    w.u16(n.entries.len() as u16)?;
    for e in &n.entries {
        w.u32(e.object.0)?;
        w.u32(e.block.0)?;
        w.u16(e.missing)?;
        w.u16(e.parity_seen)?;
        match &e.holes {
            Holes::Ranges(ranges) => {
                w.u8(0)?;
                w.u16(u16::try_from(ranges.len()).map_err(|_| WireError::Malformed)?)?;
                for &(s, len) in ranges {
                    w.u16(s)?;
                    w.u16(len)?;
                }
            }
            Holes::Bitmap(bits) => {
                w.u8(1)?;
                w.u16(u16::try_from(bits.len()).map_err(|_| WireError::Malformed)?)?;
                w.bytes(bits)?;
            }
        }
    }
    Ok(())
}

fn read_receipt(session: SessionId, r: &mut Reader<'_>) -> Result<ReceiptRepr, WireError> {
    let receiver = ReceiverId(r.u64()?);
    let flags = r.u8()?;
    if flags & !1 != 0 {
        return Err(WireError::Malformed);
    }
    let echo_timestamp = r.u32()?;
    let echo_delay_us = r.u32()?;
    let loss_ppm = r.u32()?;
    let overflow_ppm = r.u32()?;
    let queue_ppm = r.u32()?;
    if loss_ppm > 1_000_000 || overflow_ppm > 1_000_000 || queue_ppm > 1_000_000 {
        return Err(WireError::Malformed);
    }
    let watermark_object = ObjectId(r.u32()?);
    let watermark_block = BlockIndex(r.u32()?);
    let blocks_done = r.u64()?;
    let count = usize::from(r.u16()?);
    if count * 12 != r.remaining() {
        return Err(WireError::Malformed);
    }
    let mut runs = Vec::with_capacity(count);
    for _ in 0..count {
        let run = BlockRun {
            object: ObjectId(r.u32()?),
            start: BlockIndex(r.u32()?),
            len: r.u32()?,
        };
        if run.len == 0 || u64::from(run.start.0) + u64::from(run.len) > u64::from(u32::MAX) + 1 {
            return Err(WireError::Malformed);
        }
        runs.push(run);
    }
    Ok(ReceiptRepr {
        session,
        receiver,
        complete: flags & 1 != 0,
        echo_timestamp,
        echo_delay_us,
        loss_ppm,
        overflow_ppm,
        queue_ppm,
        watermark_object,
        watermark_block,
        blocks_done,
        runs,
    })
}

fn write_receipt(n: &ReceiptRepr, w: &mut Writer<'_>) -> Result<(), WireError> {
    w.u64(n.receiver.0)?;
    w.u8(u8::from(n.complete))?;
    w.u32(n.echo_timestamp)?;
    w.u32(n.echo_delay_us)?;
    w.u32(n.loss_ppm)?;
    w.u32(n.overflow_ppm)?;
    w.u32(n.queue_ppm)?;
    w.u32(n.watermark_object.0)?;
    w.u32(n.watermark_block.0)?;
    w.u64(n.blocks_done)?;
    w.u16(u16::try_from(n.runs.len()).map_err(|_| WireError::Malformed)?)?;
    for run in &n.runs {
        w.u32(run.object.0)?;
        w.u32(run.start.0)?;
        w.u32(run.len)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
