//! Server -> receiver control packets: announce, manifest chunk, accept and done.

use super::cursor::{Reader, Writer};
use super::{
    read_addr, write_addr, BlockIndex, ObjectId, ReceiverId, SessionId, WireError, ADDR_LEN,
    HEADER_LEN, MAX_DATAGRAM, MAX_MANIFEST_LEN, MAX_STRIPES, UNIT_HEADER_LEN,
};
use crate::auth::{Signature, SIGNED_LEN};
use std::net::SocketAddr;

/// Announce `auth` bits (wire.md §4): which signature blocks follow.
const AUTH_STATEMENT: u8 = 0x01;
const AUTH_ANNOUNCE: u8 = 0x02;

pub(super) fn read_signature(r: &mut Reader<'_>) -> Result<Signature, WireError> {
    Ok(Signature {
        key: r.array()?,
        sig: r.array()?,
    })
}

pub(super) fn write_signature(w: &mut Writer<'_>, s: &Signature) -> Result<(), WireError> {
    w.bytes(&s.key)?;
    w.bytes(&s.sig)
}

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
    /// Session statement (wire.md §15.1): when it was made, Unix seconds (0: not said).
    pub issued: u64,
    /// The session statement's signature: the origin's, passed on unchanged by relays.
    pub statement_sig: Option<Signature>,
    /// This announce's signature, by whoever sends it (wire.md §15.2).
    pub announce_sig: Option<Signature>,
}

impl AnnounceRepr {
    /// Length of an announce without signatures (with both: + 2 × 96).
    pub const LEN: usize =
        HEADER_LEN + ADDR_LEN + 2 * 4 + 4 + 8 + 4 + 32 + 4 + 4 + 4 + 4 + 4 + 8 + 1;

    pub fn buffer_len(&self) -> usize {
        Self::LEN
            + SIGNED_LEN
                * (usize::from(self.statement_sig.is_some())
                    + usize::from(self.announce_sig.is_some()))
    }

    pub(super) fn read(session: SessionId, r: &mut Reader<'_>) -> Result<Self, WireError> {
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
            issued: r.u64()?,
            statement_sig: None,
            announce_sig: None,
        };
        let mut a = a;
        let auth = r.u8()?;
        if auth & !(AUTH_STATEMENT | AUTH_ANNOUNCE) != 0 {
            return Err(WireError::Malformed);
        }
        if auth & AUTH_STATEMENT != 0 {
            a.statement_sig = Some(read_signature(r)?);
        }
        if auth & AUTH_ANNOUNCE != 0 {
            a.announce_sig = Some(read_signature(r)?);
        }
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
            || usize::from(a.stripes) > MAX_STRIPES
            || a.manifest_len == 0
            || a.manifest_len as usize > MAX_MANIFEST_LEN
        {
            return Err(WireError::Malformed);
        }
        Ok(a)
    }

    pub(super) fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
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
        w.u32(self.timestamp)?;
        w.u64(self.issued)?;
        let auth = if self.statement_sig.is_some() {
            AUTH_STATEMENT
        } else {
            0
        } | if self.announce_sig.is_some() {
            AUTH_ANNOUNCE
        } else {
            0
        };
        w.u8(auth)?;
        if let Some(s) = &self.statement_sig {
            write_signature(w, s)?;
        }
        if let Some(s) = &self.announce_sig {
            write_signature(w, s)?;
        }
        Ok(())
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

/// Server -> receiver: you are in; `row` is your row in the status matrix (wire.md §6). With
/// `row` = [`AcceptRepr::CHALLENGE`] it is not an admission but a return-routability challenge:
/// send again, echoing `cookie`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceptRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    pub row: u32,
    /// What every later packet of this receiver echoes, from this address (wire.md §6.1).
    pub cookie: u64,
}

impl AcceptRepr {
    /// The `row` of a challenge: "prove your address", not "you are in".
    pub const CHALLENGE: u32 = u32::MAX;

    /// A challenge, not an admission.
    pub fn is_challenge(&self) -> bool {
        self.row == Self::CHALLENGE
    }
}

/// What a done packet says (wire.md §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoneRepr {
    /// Server -> group: the session is over. Signed by the sender when it has a key
    /// (wire.md §15.3).
    Session {
        session: SessionId,
        reason: DoneReason,
        sig: Option<Signature>,
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
