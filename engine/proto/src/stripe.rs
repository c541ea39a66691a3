//! The striped first pass (docs/DESIGN.md "Nodes"; docs/wire.md §3.1): block `n` belongs to
//! stripe `n mod S`, and each stripe sends its blocks once, in order, paced at its share of
//! the rate, to the group's port + its stripe number. A server runs one [`StripePass`] per
//! data thread (the simulator runs the same ones); the [`Sender`](crate::Sender) hears how far
//! they got through [`Sender::handle_first_pass`](crate::Sender::handle_first_pass) and
//! answers NACKs, announces and repairs meanwhile.
//!
//! A stripe never waits for the control plane. It skips blocks in the session's skip set
//! (every member holds them already, [`Sender::skip_set`](crate::Sender::skip_set)), and
//! sends a block only once its source has it ([`BlockSource::available`]: a relay sends what
//! it has verified upstream).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockcast_status::AtomicBitmap;

use crate::endpoint::Endpoint;
use crate::numbering::{BlockAddr, BlockNumbering};
use crate::pacer::Pacer;
use crate::store::BlockSource;
use crate::wire::{SessionId, UnitHeaderRepr, UNIT_HEADER_LEN};
use crate::{micros, Destination, Transmit, UnitRef};

/// How often a stripe waiting for a block its source does not have yet looks again (a driver
/// that can wait for the block itself does better: [`StripePass::waiting_for`]).
pub const STALL_RECHECK: Duration = Duration::from_millis(1);

/// What one stripe sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StripeStats {
    /// First-pass units and their datagram bytes.
    pub units: u64,
    pub bytes: u64,
}

/// One stripe's first pass: a sans-IO endpoint that only sends.
pub struct StripePass<S> {
    session: SessionId,
    stripe: u16,
    stripes: u16,
    numbering: BlockNumbering,
    source: S,
    skip: Arc<AtomicBitmap>,
    /// Blocks a stripe has started, or the control thread took from the pass to send whole:
    /// whoever sets a block's bit first sends it ([`Sender::stripe_pass`](crate::Sender::stripe_pass)).
    claimed: Arc<AtomicBitmap>,
    /// The block this stripe set the bit of in `claimed`.
    owned: Option<u64>,
    epoch: Instant,
    pacer: Pacer,
    /// Next (block number, unit) to send; `None` once the stripe is done.
    next: Option<(u64, u16)>,
    /// The block the pass waits for (its source does not have it yet), and since when.
    waiting: Option<(BlockAddr, Instant)>,
    /// The block being sent: its number, address and length (looked up once per block).
    current: Option<(u64, BlockAddr, usize)>,
    stats: StripeStats,
}

impl<S: BlockSource> StripePass<S> {
    /// Stripe `stripe` of `stripes`, sending units of `session` stamped from `epoch`, paced
    /// by `pacer` set to the whole first pass's rate (the stripe takes its share). It skips
    /// the blocks in `skip`, and those in `claimed` that it did not set itself.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        session: SessionId,
        stripe: u16,
        stripes: u16,
        numbering: BlockNumbering,
        source: S,
        skip: Arc<AtomicBitmap>,
        claimed: Arc<AtomicBitmap>,
        epoch: Instant,
        mut pacer: Pacer,
    ) -> Self {
        let stripes = stripes.max(1);
        let first = u64::from(stripe);
        let next = (first < numbering.total()).then_some((first, 0));
        StripePass {
            session,
            stripe,
            stripes,
            numbering,
            source,
            skip,
            claimed,
            owned: None,
            epoch,
            pacer: {
                pacer.set_rate(share(pacer.rate(), stripes));
                pacer
            },
            next,
            waiting: None,
            current: None,
            stats: StripeStats::default(),
        }
    }

    /// The whole first pass's rate is `rate`, shared by the `live` stripes still sending
    /// (stripes differ by a block in length: one that is done leaves its share to the rest).
    pub fn set_rate(&mut self, rate: u64, live: u16) {
        self.pacer
            .set_rate(share(rate, live.clamp(1, self.stripes)));
    }

    /// Every block of this stripe numbered below this has been sent (`u64::MAX` once the
    /// stripe is done): what [`Sender::handle_first_pass`](crate::Sender::handle_first_pass)
    /// takes, as the least over the stripes.
    pub fn sent_before(&self) -> u64 {
        self.next.map_or(u64::MAX, |(seq, _)| seq)
    }

    /// The block the pass waits for: its source does not have it yet.
    pub fn waiting_for(&self) -> Option<BlockAddr> {
        self.waiting.map(|(a, _)| a)
    }

    pub fn stats(&self) -> StripeStats {
        self.stats
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn stripe(&self) -> u16 {
        self.stripe
    }

    /// Moves to the next block of the stripe.
    fn next_block(&mut self, seq: u64) {
        let n = seq + u64::from(self.stripes);
        self.next = (n < self.numbering.total()).then_some((n, 0));
    }
}

fn share(rate: u64, stripes: u16) -> u64 {
    (rate / u64::from(stripes)).max(1)
}

impl<S: BlockSource> Endpoint for StripePass<S> {
    type Event = ();

    /// A stripe takes no datagrams.
    fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, _bytes: &[u8]) {}

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let (seq, unit) = self.next?;
            if unit == 0 && self.skip.get(seq as usize) {
                // Every member holds it (or it goes whole ahead of the pass).
                self.next_block(seq);
                continue;
            }
            let (addr, block_len) = match self.current {
                Some((s, a, l)) if s == seq => (a, l),
                _ => {
                    let a = self.numbering.addr(seq);
                    let l = self.numbering.block_len(seq);
                    self.current = Some((seq, a, l));
                    (a, l)
                }
            };
            if unit == 0 && !self.source.available(addr.object, addr.block) {
                let since = self
                    .waiting
                    .filter(|(a, _)| *a == addr)
                    .map_or(now, |w| w.1);
                self.waiting = Some((addr, since));
                return None;
            }
            if unit == 0 && self.owned != Some(seq) {
                if !self.claimed.set(seq as usize) {
                    // It goes whole ahead of the pass for a priority request: the control
                    // thread set its bit first (one atomic read-modify-write: the block goes
                    // out once, by one of them).
                    self.next_block(seq);
                    continue;
                }
                self.owned = Some(seq);
            }
            if self.waiting.take().is_some() {
                // No burst to catch up on time spent waiting.
                self.pacer.restart(now);
            }
            let us = self.numbering.unit_size();
            let offset = usize::from(unit) * us;
            let len = us.min(block_len - offset);
            if !self.pacer.ready(now, UNIT_HEADER_LEN + len) {
                return None;
            }
            let hdr = UnitHeaderRepr {
                session: self.session,
                parity: false,
                repair: false,
                object: addr.object,
                block: addr.block,
                index: unit,
                round_end: 0,
                timestamp: micros(now.saturating_duration_since(self.epoch)),
            };
            let n = hdr.emit(buf).ok()?;
            if usize::from(unit) + 1 < block_len.div_ceil(us) {
                self.next = Some((seq, unit + 1));
            } else {
                self.next_block(seq);
            }
            self.pacer.spend(now, n + len);
            self.stats.units += 1;
            self.stats.bytes += (n + len) as u64;
            return Some(Transmit {
                destination: Destination::Stripe(self.stripe),
                len: n,
                payload: Some(UnitRef {
                    object: addr.object,
                    block: addr.block,
                    offset,
                    len,
                }),
            });
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next?;
        match self.waiting {
            Some((_, since)) => Some(since + STALL_RECHECK),
            // Never sent yet: due at once.
            None => Some(self.pacer.next_send().unwrap_or(self.epoch)),
        }
    }

    fn poll_event(&mut self) -> Option<()> {
        None
    }

    fn is_finished(&self) -> bool {
        self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SliceSource;
    use crate::wire::{Manifest, ObjectEntry, UnitPacket};

    fn manifest(size: usize) -> (Vec<u8>, Manifest) {
        let bytes: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let m = Manifest {
            unit_size: 4,
            units_per_block: 2,
            objects: vec![ObjectEntry::from_content("a", &bytes, 8)],
        };
        (bytes, m)
    }

    #[test]
    fn a_stripe_sends_its_blocks_in_order_skips_held_ones_and_reports_progress() {
        let (bytes, m) = manifest(8 * 5 + 3);
        let n = BlockNumbering::new(&m);
        let blocks = n.total() as usize;
        let skip = Arc::new(AtomicBitmap::new(blocks));
        skip.set(3);
        let t0 = Instant::now();
        let source = SliceSource::new(vec![&bytes[..]], 8);
        let mut p = StripePass::new(
            SessionId(7),
            1,
            2,
            n,
            source,
            skip,
            Arc::new(AtomicBitmap::new(blocks)),
            t0,
            Pacer::new(u64::MAX, Duration::ZERO),
        );
        assert_eq!(p.sent_before(), 1);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while let Some(t) = p.poll_transmit(t0, &mut buf) {
            let unit = t.payload.expect("a unit");
            let mut d = buf[..t.len].to_vec();
            d.extend_from_slice(unit.bytes(p.source()));
            let u = UnitPacket::new_checked(&d[..]).expect("valid unit");
            got.push((u.block().0, u.index(), u.payload().to_vec()));
            assert_eq!(t.destination, Destination::Stripe(1));
        }
        // Blocks 1 and 5 (block 3 is held by everyone); block 5 is 3 bytes long.
        assert_eq!(
            got,
            vec![
                (1, 0, bytes[8..12].to_vec()),
                (1, 1, bytes[12..16].to_vec()),
                (5, 0, bytes[40..43].to_vec()),
            ]
        );
        assert_eq!(p.sent_before(), u64::MAX);
        assert!(p.is_finished());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_block_goes_out_once_whether_the_stripe_or_the_control_thread_claims_it_first() {
        let (bytes, m) = manifest(8 * 4);
        let n = BlockNumbering::new(&m);
        let skip = Arc::new(AtomicBitmap::new(n.total() as usize));
        let claimed = Arc::new(AtomicBitmap::new(n.total() as usize));
        let t0 = Instant::now();
        // One 30-byte datagram per second: the stripe stops after each unit.
        let mut p = StripePass::new(
            SessionId(7),
            0,
            1,
            n,
            SliceSource::new(vec![&bytes[..]], 8),
            skip,
            claimed.clone(),
            t0,
            Pacer::new(30, Duration::ZERO),
        );
        let mut buf = [0u8; 64];
        let mut blocks = Vec::new();
        let mut now = t0;
        for _ in 0..16 {
            if let Some(t) = p.poll_transmit(now, &mut buf) {
                let mut d = buf[..t.len].to_vec();
                d.extend_from_slice(t.payload.expect("a unit").bytes(p.source()));
                blocks.push(UnitPacket::new_checked(&d[..]).expect("a unit").block().0);
                if blocks.len() == 1 {
                    // The control thread takes block 0, which the stripe has started (it
                    // keeps it), and block 2, which it has not (the stripe skips it).
                    assert!(!claimed.set(0));
                    assert!(claimed.set(2));
                }
            }
            now = p.poll_timeout().unwrap_or(now);
        }
        assert_eq!(blocks, [0, 0, 1, 1, 3, 3]);
        assert!(p.is_finished());
    }

    #[test]
    fn a_stripe_is_paced_at_its_share_of_the_rate() {
        let (bytes, m) = manifest(8 * 4);
        let n = BlockNumbering::new(&m);
        let blocks = n.total() as usize;
        let skip = Arc::new(AtomicBitmap::new(blocks));
        let t0 = Instant::now();
        // 2 stripes at 2 * 30 bytes/s: one 30-byte datagram (26-byte header + 4) per second.
        let mut p = StripePass::new(
            SessionId(7),
            0,
            2,
            n,
            SliceSource::new(vec![&bytes[..]], 8),
            skip,
            Arc::new(AtomicBitmap::new(blocks)),
            t0,
            Pacer::new(60, Duration::ZERO),
        );
        let mut buf = [0u8; 64];
        assert!(p.poll_transmit(t0, &mut buf).is_some());
        assert!(p.poll_transmit(t0, &mut buf).is_none());
        let next = p.poll_timeout().expect("more to send");
        assert_eq!(next - t0, Duration::from_secs(1));
        assert!(p.poll_transmit(next, &mut buf).is_some());
    }
}
