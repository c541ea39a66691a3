//! blockcast's protocol core: wire formats and sans-IO state machines.
//!
//! This crate does no I/O: no sockets, threads, files or clock. The node layer (and the
//! simulator) feed it datagrams and the current time, and send what it asks them to send.
//! See `docs/wire.md` for the packet formats and `docs/DESIGN.md` for the protocol.
#![forbid(unsafe_code)]

pub mod auth;
mod bucket;
pub mod coding;
pub mod endpoint;
pub mod numbering;
pub mod origin;
pub mod pacer;
pub mod rate;
pub mod receiver;
pub mod requester;
mod rng;
pub mod sender;
pub mod split;
pub mod store;
pub mod stripe;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

pub use endpoint::Endpoint;
pub use numbering::{BlockAddr, BlockNumbering};
pub use rate::{Congestion, RateControl, RateLimits};
pub use receiver::{
    CopyTargets, Rebuild, Receiver, ReceiverConfig, ReceiverEvent, ReceiverStats, SplitMember,
    UnitsWanted,
};
pub use sender::{
    FirstPassProgress, MemberReport, Sender, SenderConfig, SenderEvent, SenderStats,
    MEMBER_REPAIR_SHARE, ORIGINALS_FACTOR, SPLIT_MEMBER_REPAIR_SHARE,
};
pub use split::{copies, SplitConfig};
pub use store::{BlockSource, BlockStore, HeldBlocks, MemStore, SliceSource, StoreError};
pub use stripe::{StripePass, StripeStats};

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The session's multicast group (data plane).
    Group,
    /// Stripe `s` of a striped first pass: the group's address, port + `s` (docs/wire.md
    /// §3.1).
    Stripe(u16),
    /// One peer, by unicast (control plane).
    Peer(SocketAddr),
}

/// A datagram to send: the first `len` bytes of the caller's buffer, followed (for data
/// units) by `payload` taken straight from the block source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: Destination,
    /// Bytes written at the start of the caller's buffer (the whole datagram, or the unit
    /// header when `payload` is set).
    pub len: usize,
    /// Source bytes that follow the header: a data unit sent without a copy.
    pub payload: Option<UnitRef>,
}

impl Transmit {
    /// Length of the whole datagram.
    pub fn datagram_len(&self) -> usize {
        self.len + self.payload.map_or(0, |p| p.len)
    }
}

/// A unit's bytes inside the block source: `len` bytes at `offset` of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitRef {
    pub object: wire::ObjectId,
    pub block: wire::BlockIndex,
    pub offset: usize,
    pub len: usize,
}

impl UnitRef {
    /// The unit's bytes in `source`.
    pub fn bytes<'a, S: BlockSource + ?Sized>(&self, source: &'a S) -> &'a [u8] {
        &source.block(self.object, self.block)[self.offset..self.offset + self.len]
    }
}

/// The geometry of a session: how objects are cut into blocks and units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Payload bytes per unit (even: the parity code needs it).
    pub unit_size: u16,
    /// Units per block, `k` of the parity code.
    pub units_per_block: u16,
    /// Parity units the code can make per block.
    pub max_parity: u16,
}

impl Geometry {
    pub fn block_size(&self) -> usize {
        usize::from(self.unit_size) * usize::from(self.units_per_block)
    }
}

/// Microseconds as the wire carries them (wrapping u32).
pub(crate) fn micros(d: Duration) -> u32 {
    d.as_micros() as u32
}
