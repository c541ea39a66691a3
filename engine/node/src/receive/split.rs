//! Split mode (no multicast, docs/wire.md §14): a member forwards copies of the units it gets
//! as their copy flags and its plan say ([`blockcast_proto::copies`]), straight from the
//! received (GRO super-)datagram with the flags rewritten in place, one GSO send per peer.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Instant;

use blockcast_io::RecvBatch;
use blockcast_proto::wire::{set_copy_flags, CopyFlags, UnitPacket};
use blockcast_proto::Receiver;

use super::store::FileStore;

/// Copies forwarded, in datagrams.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Forwarded {
    /// Sent to a peer.
    pub sent: u64,
    /// Refused by the kernel (a full send buffer): lost to that peer, repaired as loss.
    pub dropped: u64,
}

impl std::ops::AddAssign for Forwarded {
    fn add_assign(&mut self, o: Forwarded) {
        self.sent += o.sent;
        self.dropped += o.dropped;
    }
}

/// Forwards copies of the units of `batch`, then hands every datagram to the protocol. A GRO
/// super-datagram whose segments all carry the same flags goes to each peer whole (one GSO
/// send per peer), its flags rewritten in place; otherwise segment by segment.
pub(crate) fn forward_and_handle(
    rx: &mut Receiver<FileStore>,
    batch: &mut RecvBatch,
    socket: &UdpSocket,
    now: Instant,
) -> Forwarded {
    let mut sent = Forwarded::default();
    for i in 0..batch.len() {
        let Some(d) = batch.get(i) else { continue };
        if d.truncated {
            continue;
        }
        let seg = d.segment_size;
        let Some(bytes) = batch.bytes_mut(i) else {
            continue;
        };
        let size = match seg {
            Some(s) if s > 0 => usize::from(s),
            _ => bytes.len().max(1),
        };
        match common_flags(rx, bytes, size) {
            Some(Some(copy)) if copy.any() => {
                sent += forward(rx, bytes, size, seg, copy, socket);
            }
            Some(_) => {}
            None => {
                for s in bytes.chunks_mut(size) {
                    if let Some(copy) = unit_flags(rx, s).filter(|c| c.any()) {
                        let len = s.len();
                        sent += forward(rx, s, len, None, copy, socket);
                    }
                }
            }
        }
    }
    rx.store_mut().stage(batch);
    for d in batch.iter() {
        if d.truncated {
            continue;
        }
        for s in d.segments() {
            rx.handle_datagram(now, SocketAddr::V4(d.source), s);
        }
    }
    sent
}

/// The copy flags of a unit of this session (nothing else is forwarded).
fn unit_flags(rx: &Receiver<FileStore>, bytes: &[u8]) -> Option<CopyFlags> {
    UnitPacket::new_checked(bytes)
        .ok()
        .filter(|u| Some(u.session()) == rx.session())
        .map(|u| u.copy_flags())
}

/// `Some(flags)` when every segment is a unit of this session with the same flags (`None`
/// inside when there are no segments); `None` when they differ.
fn common_flags(rx: &Receiver<FileStore>, bytes: &[u8], size: usize) -> Option<Option<CopyFlags>> {
    let mut common: Option<CopyFlags> = None;
    for s in bytes.chunks(size) {
        let c = unit_flags(rx, s)?;
        if common.is_some_and(|x| x != c) {
            return None;
        }
        common = Some(c);
    }
    Some(common)
}

/// Sends `bytes` (segments of `size` bytes, all units with copy flags `copy`) to the peers
/// the plan names, each copy with the flags it must carry.
fn forward(
    rx: &Receiver<FileStore>,
    bytes: &mut [u8],
    size: usize,
    seg: Option<u16>,
    copy: CopyFlags,
    socket: &UdpSocket,
) -> Forwarded {
    let segments = bytes.len().div_ceil(size) as u64;
    let mut sent = Forwarded::default();
    let mut flags_now: Option<CopyFlags> = None;
    for (to, flags) in blockcast_proto::copies(rx.copy_targets(copy)) {
        let SocketAddr::V4(to) = to else { continue };
        if flags_now != Some(flags) {
            for s in bytes.chunks_mut(size) {
                let _ = set_copy_flags(s, flags);
            }
            flags_now = Some(flags);
        }
        // A full send buffer drops the copy: the protocol treats it as loss.
        if send(socket, to, bytes, seg) {
            sent.sent += segments;
        } else {
            sent.dropped += segments;
        }
    }
    sent
}

fn send(socket: &UdpSocket, to: SocketAddrV4, bytes: &[u8], seg: Option<u16>) -> bool {
    blockcast_io::send_segments(socket, to, bytes, seg).is_ok()
}
