//! The session's description: the announce (adopted once, checked every time after) and
//! the manifest, assembled from its chunks, checked against the announced hash, and handed
//! to the store to prepare.

use std::ops::Range;
use std::time::Instant;

use super::blocks::{Blocks, PassFrontier};
use super::{Receiver, ReceiverEvent};
use crate::numbering::BlockNumbering;
use crate::store::BlockStore;
use crate::wire::{AnnounceRepr, LeaveReason, Manifest};

/// The manifest's bytes as its chunks arrive.
#[derive(Default)]
pub(super) struct ManifestAssembly {
    /// As long as the announced manifest (empty before the first announce, and once the
    /// manifest is complete).
    buf: Vec<u8>,
    /// Byte ranges of the manifest received, sorted and merged.
    ranges: Vec<Range<usize>>,
}

impl ManifestAssembly {
    /// Start over from nothing (a fail-over before the manifest was complete).
    pub(super) fn reset(&mut self) {
        self.buf = Vec::new();
        self.ranges.clear();
    }

    /// Places `bytes` at `offset`: `None` if they do not fit the manifest, else whether
    /// every byte of it is here now.
    fn place(&mut self, offset: usize, bytes: &[u8]) -> Option<bool> {
        let end = offset + bytes.len();
        if end > self.buf.len() {
            return None;
        }
        self.buf[offset..end].copy_from_slice(bytes);
        self.ranges.push(offset..end);
        self.ranges.sort_unstable_by_key(|r| (r.start, r.end));
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.ranges = merged;
        Some(self.ranges.len() == 1 && self.ranges[0] == (0..self.buf.len()))
    }
}

impl<S: BlockStore> Receiver<S> {
    /// Where an announce says the first pass is: every block before the returned number
    /// has been sent once (all of them once it is over).
    fn announced_pass(&self, a: &AnnounceRepr) -> Option<u64> {
        if a.pass_object.0 == u32::MAX {
            Some(self.numbering.total())
        } else {
            self.numbering.seq(a.pass_object, a.pass_block)
        }
    }

    pub(super) fn on_announce(&mut self, now: Instant, a: AnnounceRepr) {
        let first = self.announce.is_none();
        if let Some(old) = &self.announce {
            // A session cannot change its manifest, geometry or control address mid-way.
            if old.manifest_hash != a.manifest_hash
                || old.manifest_len != a.manifest_len
                || old.control != a.control
                || old.unit_size != a.unit_size
                || old.units_per_block != a.units_per_block
                || old.max_parity != a.max_parity
                || old.stripes != a.stripes
            {
                // The session cannot change its manifest: ignore the impostor.
                self.stats.bad_packets += 1;
                return;
            }
        }
        if first {
            self.events.push_back(ReceiverEvent::Announced {
                session: a.session,
                control: a.control,
            });
        }
        let known = if first && self.manifest.is_none() {
            let at = self.known_manifests.iter().position(|(h, m)| {
                *h == a.manifest_hash
                    && m.unit_size == a.unit_size
                    && m.units_per_block == a.units_per_block
            });
            if at.is_none() {
                self.assembly.buf = vec![0u8; a.manifest_len as usize];
            }
            at.map(|i| self.known_manifests.swap_remove(i).1)
        } else {
            None
        };
        self.announce = Some(a);
        if let Some(m) = known {
            // Content we hold a manifest for (a resumed receive): no need to wait for its
            // chunks to come round.
            self.known_manifests.clear();
            self.adopt_manifest(now, m);
        }
        if let Some(p) = self.announce.as_ref().and_then(|a| self.announced_pass(a)) {
            self.pass_through(now, p);
        }
    }

    pub(super) fn on_manifest_chunk(&mut self, now: Instant, offset: usize, bytes: &[u8]) {
        if self.manifest.is_some() || self.assembly.buf.is_empty() {
            return;
        }
        match self.assembly.place(offset, bytes) {
            None => {
                self.stats.bad_packets += 1;
                return;
            }
            Some(false) => return,
            Some(true) => {}
        }
        let Some(a) = self.announce.as_ref() else {
            return;
        };
        let buf = &self.assembly.buf;
        let manifest = match (blake3::hash(buf).as_bytes() == &a.manifest_hash)
            .then(|| Manifest::parse(buf))
        {
            Some(Ok(m)) if m.unit_size == a.unit_size && m.units_per_block == a.units_per_block => {
                m
            }
            _ => {
                // A forged or corrupted chunk: start the manifest over.
                self.stats.bad_packets += 1;
                self.assembly.ranges.clear();
                return;
            }
        };
        self.adopt_manifest(now, manifest);
        // Blocks the first pass has already gone by are missing entirely.
        if let Some(p) = self.announce.as_ref().and_then(|a| self.announced_pass(a)) {
            self.pass_through(now, p);
        }
    }

    /// The manifest is known (assembled and checked, or offered by the node for the announced
    /// hash): the store makes room, says what it holds already, and we join once what it
    /// holds is checked.
    fn adopt_manifest(&mut self, now: Instant, manifest: Manifest) {
        if let Err(e) = self.store.prepare(&manifest) {
            self.events.push_back(ReceiverEvent::StoreFailed(e));
            self.leave(LeaveReason::Failed);
            return;
        }
        self.numbering = BlockNumbering::new(&manifest);
        let total = self.numbering.total();
        self.blocks = Blocks::new(total);
        self.first_pass = PassFrontier::new(total);
        self.manifest = Some(manifest);
        self.assembly.buf = Vec::new();
        self.events.push_back(ReceiverEvent::ManifestReady);
        let held = self.store.held();
        self.take_held(now, held);
        // Join once ready to place units (a server waiting for receivers then starts the
        // first pass only when they can use it) and once what the store held is checked (so
        // the first receipt notice after the accept says all we hold).
        if self.checking == 0 {
            self.feedback.next_join = Some(now);
        }
        if total == 0 {
            self.finish(now);
        }
    }
}
