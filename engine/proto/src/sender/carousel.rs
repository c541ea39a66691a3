//! What the sender tells the whole group: announces, the manifest carousel that follows
//! each announce (for late joiners), and the done packets that end the session.

use std::time::{Duration, Instant};

use super::split::Fan;
use super::{Phase, Sender};
use crate::store::BlockSource;
use crate::wire::{
    AnnounceRepr, BlockIndex, DoneReason, DoneRepr, Manifest, ManifestChunkRepr, ObjectId, Packet,
};
use crate::{micros, Transmit};

/// The most bytes per second the carousel sends while the first pass waits for members
/// ([`crate::SenderConfig::waiting_announce_interval`]): a small manifest goes round every
/// waiting interval, a large one no faster than this.
const WAITING_CAROUSEL_RATE: u64 = 2_000_000;

/// About what an announce takes on the wire (signed: 64-byte signatures and the statement).
const ANNOUNCE_BYTES: usize = 300;

/// The announce timer and the manifest carousel.
pub(super) struct Carousel {
    /// The manifest as sent in chunks; its hash goes in every announce.
    pub(super) bytes: Vec<u8>,
    pub(super) hash: [u8; 32],
    pub(super) next_announce: Option<Instant>,
    /// An announce goes out at the next chance (its timer ran out, or the first pass ended).
    pub(super) announce_now: bool,
    /// Announces still to repeat soon after the one that said the first pass is over.
    pub(super) pass_end_repeats: u8,
    /// Manifest chunks still to send after the latest announce.
    manifest_due: usize,
    /// The next manifest chunk: each announce's chunks go on from where the last stopped.
    manifest_cursor: usize,
}

impl Carousel {
    pub(super) fn new(manifest: &Manifest) -> Result<Self, &'static str> {
        let bytes = manifest.emit().map_err(|_| "manifest cannot be encoded")?;
        let hash = *blake3::hash(&bytes).as_bytes();
        Ok(Carousel {
            bytes,
            hash,
            next_announce: None,
            announce_now: true,
            pass_end_repeats: 0,
            manifest_due: 0,
            manifest_cursor: 0,
        })
    }

    /// An announce is due, or manifest chunks after one.
    pub(super) fn is_due(&self) -> bool {
        self.announce_now || self.manifest_due > 0
    }
}

impl<S: BlockSource> Sender<S> {
    pub(super) fn manifest_chunk_len(&self) -> usize {
        usize::from(self.cfg.geometry.unit_size).clamp(1, 1200)
    }

    pub(super) fn manifest_chunks(&self) -> usize {
        self.carousel
            .bytes
            .len()
            .div_ceil(self.manifest_chunk_len())
    }

    pub(super) fn announce_repr(&self, now: Instant) -> AnnounceRepr {
        let (po, pb) = match self.first_pass.next {
            _ if self.first_pass_done() => (ObjectId(u32::MAX), BlockIndex(u32::MAX)),
            Some(p) => {
                let a = self.numbering.addr(p.seq);
                (a.object, a.block)
            }
            None => {
                let a = self.numbering.addr(self.first_pass.external_sent);
                (a.object, a.block)
            }
        };
        AnnounceRepr {
            session: self.cfg.session,
            control: self.cfg.control,
            unit_size: self.cfg.geometry.unit_size,
            units_per_block: self.cfg.geometry.units_per_block,
            max_parity: self.cfg.geometry.max_parity,
            stripes: self.cfg.stripes,
            object_count: self.manifest.objects.len() as u32,
            total_bytes: self.manifest.total_bytes(),
            manifest_len: self.carousel.bytes.len() as u32,
            manifest_hash: self.carousel.hash,
            group_size: (self.membership.members.len() as u32).max(1),
            grtt_us: micros(self.grtt()).max(1),
            pass_object: po,
            pass_block: pb,
            timestamp: self.timestamp(now),
            issued: self.cfg.issued,
            statement_sig: self.statement_sig,
            announce_sig: None,
        }
    }

    /// The announce to send at `now`, signed when the server has a key (wire.md §15): the
    /// statement once, the announce whenever it changed since the last one signed.
    pub(super) fn signed_announce(&mut self, now: Instant) -> AnnounceRepr {
        let Some(signer) = self.cfg.signer.clone() else {
            return self.announce_repr(now);
        };
        if self.statement_sig.is_none() {
            self.statement_sig = Some(signer.sign_statement(&self.announce_repr(now)));
        }
        let a = self.announce_repr(now);
        if let Some(last) = &self.signed_announce {
            let unsigned = AnnounceRepr {
                announce_sig: None,
                ..last.clone()
            };
            if unsigned == a {
                return last.clone();
            }
        }
        let mut a = a;
        signer.sign_announce(&mut a);
        self.signed_announce = Some(a.clone());
        a
    }

    /// A session Done for `reason`, signed when the server has a key.
    pub(super) fn session_done(&self, reason: DoneReason) -> DoneRepr {
        DoneRepr::Session {
            session: self.cfg.session,
            reason,
            sig: self
                .cfg
                .signer
                .as_ref()
                .map(|s| s.sign_done(self.cfg.session, reason, self.cfg.control)),
        }
    }

    /// The time to the next announce: the configured interval, or while the first pass waits
    /// for members the shorter waiting interval, as long as a turn of the carousel (the
    /// announce and the manifest chunks after it) does not go round faster than
    /// [`WAITING_CAROUSEL_RATE`].
    pub(super) fn announce_interval_now(&self) -> Duration {
        let interval = self.cfg.announce_interval;
        let Some(waiting) = self
            .cfg
            .waiting_announce_interval
            .filter(|_| self.phase == Phase::Waiting)
        else {
            return interval;
        };
        let chunks = self.cfg.manifest_chunks_per_announce.max(1);
        let turn = self
            .carousel
            .bytes
            .len()
            .min(chunks.saturating_mul(usize::from(self.cfg.geometry.unit_size)))
            + ANNOUNCE_BYTES;
        let by_bytes = Duration::from_secs_f64(turn as f64 / WAITING_CAROUSEL_RATE as f64);
        waiting.max(by_bytes).min(interval)
    }

    /// The announce, or the next manifest chunk after it, to the group ([`Carousel::is_due`]
    /// says whether one is due).
    pub(super) fn poll_carousel(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.carousel.announce_now {
            self.carousel.announce_now = false;
            let interval = self.announce_interval_now();
            // The announce that says the first pass is over is all that tells a receiver the
            // last blocks' passes are: it goes again a round trip later, twice, so that one
            // lost copy does not cost an announce interval of tail.
            let interval = if self.carousel.pass_end_repeats > 0 {
                self.carousel.pass_end_repeats -= 1;
                self.carousel.announce_now = false;
                (self.grtt() * 2).min(interval)
            } else {
                interval
            };
            self.carousel.next_announce = Some(now + interval);
            self.carousel.manifest_due = self.cfg.manifest_chunks_per_announce.max(1);
            let len = Packet::Announce(self.signed_announce(now)).emit(buf).ok()?;
            self.stats.announces += 1;
            self.advance_phase(now);
            return Some(self.group(len));
        }
        if self.carousel.manifest_due > 0 {
            self.carousel.manifest_due -= 1;
            let chunk = usize::from(self.cfg.geometry.unit_size).min(buf.len().saturating_sub(64));
            if chunk == 0 {
                return None;
            }
            let chunks = self.carousel.bytes.len().div_ceil(chunk);
            let i = self.carousel.manifest_cursor % chunks;
            self.carousel.manifest_cursor = (i + 1) % chunks;
            if self.carousel.manifest_cursor == 0 {
                // One full turn per announce is enough.
                self.carousel.manifest_due = 0;
            }
            let start = i * chunk;
            let end = (start + chunk).min(self.carousel.bytes.len());
            let len = Packet::Manifest(ManifestChunkRepr {
                session: self.cfg.session,
                offset: start as u32,
                bytes: &self.carousel.bytes[start..end],
            })
            .emit(buf)
            .ok()?;
            self.stats.manifest_chunks += 1;
            return Some(self.group(len));
        }
        None
    }

    /// Closing: the done packet, `left` more times, 2 GRTT apart (to the group, or in split
    /// mode to every member by unicast).
    pub(super) fn poll_done(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        reason: DoneReason,
        left: u32,
    ) -> Option<Transmit> {
        if left == 0 || self.closing_at.is_none_or(|t| now < t) {
            return None;
        }
        let next = now + (self.grtt() * 2).max(Duration::from_millis(1));
        if self.split.is_some() {
            // Split mode: the done packet goes to every member by unicast.
            self.phase = Phase::Closing {
                reason,
                left: left - 1,
            };
            self.closing_at = Some(next);
            self.fan_out(Fan::Done(reason));
            return self.poll_fanout(now, buf);
        }
        let len = Packet::Done(self.session_done(reason)).emit(buf).ok()?;
        self.phase = Phase::Closing {
            reason,
            left: left - 1,
        };
        self.closing_at = Some(next);
        Some(self.group(len))
    }
}
