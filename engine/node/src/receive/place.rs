//! Units received straight into their place: the receive thread guesses which units the next
//! read of the data socket brings (the ones after the last first-pass unit it saw, through its
//! block and on into the next blocks of its stripe) and lays the read out so that the kernel
//! writes each one's payload where it belongs in its block's buffer, its header into the batch
//! ([`RecvBatch::place_next`]). A right guess saves the copy from the batch into the buffer
//! where the kernel hands over GRO batches (without them the kernel's copy into the buffer
//! costs what it saves, and reads are not laid out); a wrong one costs a copy, as before: the
//! payload is handed to the protocol core where it landed and the store copies it to its
//! place.
//!
//! Only units the protocol core still wants are guessed into their place
//! ([`Receiver::units_wanted`]), and only into blocks assembled in a buffer, so whatever the
//! kernel writes there lands on nothing held. What lands in a guessed place is read (or copied
//! out) before anything is written to the buffer: the store makes its writes after the batch
//! is handled.

use std::net::SocketAddr;
use std::time::Instant;

use blockcast_io::{RecvBatch, Segment, Slot};
use blockcast_proto::wire::{BlockIndex, ObjectId, UnitParts, UnitView, UNIT_HEADER_LEN};
use blockcast_proto::Receiver;

use super::store::FileStore;

/// The guesses for the data socket.
#[derive(Debug)]
pub(crate) struct Placer {
    enabled: bool,
    /// The unit after the last first-pass data unit seen.
    next: Option<(ObjectId, BlockIndex, u16)>,
    /// Datagrams per message (GRO segments) in the last batch that ended with a first-pass
    /// unit, at least 1.
    per_message: usize,
    slots: Vec<Option<Slot>>,
    /// Units read in two pieces (their payload in a guessed place: theirs, or another's).
    pub parts: u64,
}

impl Placer {
    /// `enabled`: datagrams are read as they came (no group secret to open them in place, no
    /// split mode forwarding them).
    pub(crate) fn new(enabled: bool) -> Self {
        Placer {
            enabled,
            next: None,
            per_message: 1,
            slots: Vec::new(),
            parts: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Lays the next read of `batch` out for the units expected next, if any can be placed:
    /// the rest of the block of the last unit seen, then the next blocks of its stripe.
    pub(crate) fn plan(&mut self, rx: &mut Receiver<FileStore>, batch: &mut RecvBatch) {
        if !self.enabled {
            return;
        }
        // Without GRO batches (each datagram alone) a layout saves nothing: the kernel's
        // copy into the buffers costs what the copy from the batch did (docs/DESIGN.md,
        // 2026-12-04).
        if self.per_message < 2 {
            return;
        }
        let Some((mut object, mut block, first)) = self.next else {
            return;
        };
        let Some(us) = rx
            .manifest()
            .map(|m| usize::from(m.unit_size))
            .filter(|&u| u > 0)
        else {
            return;
        };
        // As many as a full read brings, in messages as large as the last ones: a plan for
        // only as many as the last read brought left a quarter of the units unplaced at full
        // speed (reads grow when the receiver falls behind), and costs little more.
        let want = self.per_message * batch.capacity();
        self.slots.clear();
        let mut any = false;
        let mut index = usize::from(first);
        while self.slots.len() < want {
            let Some(block_len) = rx.manifest().and_then(|m| m.block_len(object, block.0)) else {
                break;
            };
            let k = block_len.div_ceil(us);
            if index >= k {
                // On to the next block this socket's stripe sends, in a buffer of its own
                // (taken now, as its first unit would take it).
                let Some((o, b)) = rx.next_on_stripe(object, block) else {
                    break;
                };
                (object, block, index) = (o, b, 0);
                if rx.wants_unit(o, b, 0) {
                    rx.store_mut().claim_buffer(o, b);
                }
                continue;
            }
            let place = rx.store_mut().block_place(object, block);
            let wanted = rx.units_wanted(object, block);
            let end = k.min(index + want - self.slots.len());
            for i in index..end {
                let (at, len) = (i * us, (block_len - i * us).min(us));
                let slot = match place {
                    Some((base, room)) if at + len <= room && wanted.get(i as u16) => {
                        // SAFETY (of the arithmetic): at + len <= room, the bytes from
                        // `base` to the buffer's end.
                        Some(Slot::new(unsafe { base.add(at) }, len))
                    }
                    _ => None,
                };
                any |= slot.is_some();
                self.slots.push(slot);
            }
            index = end;
        }
        if any {
            // SAFETY: each slot is the place of a distinct unit in a block buffer the store
            // holds (distinct units, apart; not the batch). The buffers stay with the store,
            // unread and unwritten by anything else, until this batch is handled and flushed:
            // a block leaves its buffer only between batches (the verify hand-off in the
            // driver's events, after the read), and the store writes into buffers only in its
            // flush, after every datagram of the batch was handled.
            unsafe { batch.place_next(UNIT_HEADER_LEN, self.per_message, us, &self.slots) };
        }
    }

    /// Hands every datagram of `batch` to `rx` (as [`crate::driver::feed`] does), a unit in
    /// its guessed place as two pieces, and learns from the batch what comes next.
    pub(crate) fn feed(&mut self, rx: &mut Receiver<FileStore>, now: Instant, batch: &RecvBatch) {
        let mut most = 1;
        // The last datagram's first bytes: where they lie in the batch, or (joined) a copy.
        let mut last: Option<&[u8]> = None;
        let mut joined = [0u8; UNIT_HEADER_LEN];
        for i in 0..batch.len() {
            let Some((source, segments)) = batch.segments_placed(i) else {
                continue;
            };
            let from = SocketAddr::V4(source);
            let mut n = 0;
            for s in segments {
                n += 1;
                match s {
                    Segment::Whole(bytes) => {
                        last = Some(bytes);
                        rx.handle_datagram(now, from, bytes);
                    }
                    Segment::Parts { head, payload } => {
                        last = Some(head);
                        if rx.handle_unit_parts(now, from, head, payload) {
                            self.parts += 1;
                        } else {
                            rx.handle_datagram(now, from, &[head, payload].concat());
                        }
                    }
                    Segment::Joined(bytes) => {
                        let k = bytes.len().min(UNIT_HEADER_LEN);
                        joined[..k].copy_from_slice(&bytes[..k]);
                        last = Some(&joined[..k]);
                        rx.handle_datagram(now, from, &bytes);
                    }
                }
            }
            most = most.max(n);
        }
        if let Some(head) = last {
            self.learn(head, most);
        }
    }

    /// After a batch: if its last datagram (`head`, its first bytes) was a unit of the first
    /// pass, the next read is expected to bring the units after it, in messages of as many
    /// datagrams as the batch's largest (`most`). A batch that ended with another datagram
    /// (an announce, a repair) changes nothing.
    fn learn(&mut self, head: &[u8], most: usize) {
        // The header and a one-byte stand-in payload: the view checks the header alone.
        let Some(head) = head.get(..UNIT_HEADER_LEN) else {
            return;
        };
        let Ok(u) = UnitParts::new_checked(head, &[0]) else {
            return;
        };
        if u.is_parity() || u.is_repair() {
            return;
        }
        self.per_message = most;
        self.next = u.index().checked_add(1).map(|i| (u.object(), u.block(), i));
    }
}
