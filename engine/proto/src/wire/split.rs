//! Split-mode packets (wire.md §13): the solicit a member sends before it has the manifest,
//! and the plan that tells it where to forward copies.

use super::cursor::{Reader, Writer};
use super::{read_addr, write_addr, ReceiverId, SessionId, WireError, ADDR_LEN, HEADER_LEN};
use std::net::SocketAddr;

/// Most cell peers one plan names (wire.md §13.1): a plan then fits a 1500-byte MTU.
pub const MAX_PLAN_PEERS: usize = 63;
/// Most next-cell members one plan names (wire.md §13.1): the copy tree's fan-out.
pub const MAX_PLAN_NEXTS: usize = 4;

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
    /// Its designated member in each next cell of the copy tree (none in a leaf cell; at
    /// most [`MAX_PLAN_NEXTS`]).
    pub nexts: Vec<SocketAddr>,
    /// The other members of its copy cell (at most [`MAX_PLAN_PEERS`]).
    pub peers: Vec<SocketAddr>,
}

impl PlanRepr {
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 8 + 4 + 2 + 1 + ADDR_LEN * self.nexts.len() + 2 + ADDR_LEN * self.peers.len()
    }
}

/// Member -> server (split mode, before the manifest): send me the announce and the
/// manifest by unicast; I am in `zone` (wire.md §13.2). Session 0 asks for any session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SolicitRepr {
    pub session: SessionId,
    pub receiver: ReceiverId,
    /// The cookie of the server's challenge to this address (0 before one: wire.md §13.2).
    pub cookie: u64,
    pub zone: u16,
}

/// A member address in a plan: a unicast address with a port.
fn peer_addr_ok(a: &SocketAddr) -> bool {
    a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
}

pub(super) fn read_plan(session: SessionId, r: &mut Reader<'_>) -> Result<PlanRepr, WireError> {
    let receiver = ReceiverId(r.u64()?);
    let epoch = r.u32()?;
    let zone = r.u16()?;
    let next_count = usize::from(r.u8()?);
    if next_count > MAX_PLAN_NEXTS {
        return Err(WireError::Malformed);
    }
    let mut nexts = Vec::with_capacity(next_count);
    for _ in 0..next_count {
        nexts.push(read_addr(r)?);
    }
    let count = usize::from(r.u16()?);
    if count > MAX_PLAN_PEERS || count * ADDR_LEN != r.remaining() {
        return Err(WireError::Malformed);
    }
    let mut peers = Vec::with_capacity(count);
    for _ in 0..count {
        peers.push(read_addr(r)?);
    }
    if !nexts.iter().chain(peers.iter()).all(peer_addr_ok) {
        return Err(WireError::Malformed);
    }
    Ok(PlanRepr {
        session,
        receiver,
        epoch,
        zone,
        nexts,
        peers,
    })
}

pub(super) fn write_plan(p: &PlanRepr, w: &mut Writer<'_>) -> Result<(), WireError> {
    if p.peers.len() > MAX_PLAN_PEERS
        || p.nexts.len() > MAX_PLAN_NEXTS
        || !p.nexts.iter().chain(p.peers.iter()).all(peer_addr_ok)
    {
        return Err(WireError::Malformed);
    }
    w.u64(p.receiver.0)?;
    w.u32(p.epoch)?;
    w.u16(p.zone)?;
    w.u8(p.nexts.len() as u8)?;
    for a in &p.nexts {
        write_addr(w, a)?;
    }
    w.u16(p.peers.len() as u16)?;
    for a in &p.peers {
        write_addr(w, a)?;
    }
    Ok(())
}
