//! Data and parity units (the hot path: a zero-copy view and the header repr), their split-mode
//! copy flags, and XOR repairs, which share the unit's 26-byte header.

use super::cursor::Writer;
use super::{
    BlockIndex, Header, Kind, ObjectId, SessionId, WireError, FLAGS_AT, FLAG_COPY_NEXT,
    FLAG_COPY_ZONE, FLAG_REPAIR, UNIT_HEADER_LEN,
};

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
        let p = Self::header_checked(buf)?;
        if p.payload().is_empty() {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    /// [`Self::new_checked`] without the payload: `buf` may end with the header.
    fn header_checked(buf: T) -> Result<Self, WireError> {
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

/// A data or parity unit received in two pieces: its header where the receive batch put it,
/// its payload where the receiver placed it (straight into its block's buffer). The same
/// checks as [`UnitPacket::new_checked`] over the two pieces joined.
#[derive(Clone, Copy, Debug)]
pub struct UnitParts<'a> {
    head: UnitPacket<&'a [u8]>,
    payload: &'a [u8],
}

impl<'a> UnitParts<'a> {
    /// `head`: exactly the unit header's bytes; `payload`: what followed them.
    pub fn new_checked(head: &'a [u8], payload: &'a [u8]) -> Result<Self, WireError> {
        if head.len() != UNIT_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if payload.is_empty() {
            return Err(WireError::Truncated);
        }
        let head = UnitPacket::header_checked(head)?;
        Ok(UnitParts { head, payload })
    }
}

/// What the receiver reads of a unit, whether it came whole ([`UnitPacket`]) or in two
/// pieces ([`UnitParts`]): its header's fields, through a view of the header alone, and its
/// payload.
pub trait UnitView {
    /// A view of the unit's header bytes (its payload accessor gives nothing).
    fn head(&self) -> UnitPacket<&[u8]>;
    fn payload(&self) -> &[u8];

    fn session(&self) -> SessionId {
        self.head().session()
    }
    fn is_parity(&self) -> bool {
        self.head().is_parity()
    }
    fn is_repair(&self) -> bool {
        self.head().is_repair()
    }
    fn object(&self) -> ObjectId {
        self.head().object()
    }
    fn block(&self) -> BlockIndex {
        self.head().block()
    }
    fn index(&self) -> u16 {
        self.head().index()
    }
    fn round_end(&self) -> u16 {
        self.head().round_end()
    }
    fn timestamp(&self) -> u32 {
        self.head().timestamp()
    }
}

impl<T: AsRef<[u8]>> UnitView for UnitPacket<T> {
    fn head(&self) -> UnitPacket<&[u8]> {
        UnitPacket {
            buf: &self.buf.as_ref()[..UNIT_HEADER_LEN],
            header: self.header,
        }
    }
    fn payload(&self) -> &[u8] {
        UnitPacket::payload(self)
    }
}

impl UnitView for UnitParts<'_> {
    fn head(&self) -> UnitPacket<&[u8]> {
        self.head
    }
    fn payload(&self) -> &[u8] {
        self.payload
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
