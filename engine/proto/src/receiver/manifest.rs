//! The session's description: the announce (adopted once, checked every time after) and
//! the manifest, assembled from its chunks, checked against the announced hash, and handed
//! to the store to prepare.

use std::collections::BTreeMap;
use std::time::Instant;

use super::blocks::{Blocks, PassFrontier};
use super::{Receiver, ReceiverEvent};
use crate::numbering::BlockNumbering;
use crate::store::BlockStore;
use crate::wire::{AnnounceRepr, LeaveReason, Manifest};

/// Bytes of manifest storage allocated at a time, as chunks arrive: an announce alone makes
/// the receiver allocate nothing, chunks make it allocate at most a page each.
const PAGE: usize = 64 << 10;

/// The manifest's bytes as its chunks arrive, and the byte ranges received: an interval set
/// (start -> end, disjoint, merged on insert), so placing a chunk costs O(log n) amortized
/// whatever the chunks' sizes and order (each range is removed at most once).
#[derive(Default)]
pub(super) struct ManifestAssembly {
    /// The announced manifest length (0: none announced, or the manifest is complete).
    len: usize,
    pages: Vec<Option<Box<[u8]>>>,
    ranges: BTreeMap<usize, usize>,
}

impl ManifestAssembly {
    /// Start over from nothing (a fail-over before the manifest was complete, a session
    /// given up).
    pub(super) fn reset(&mut self) {
        *self = ManifestAssembly::default();
    }

    /// Assemble a manifest of `len` bytes.
    fn open(&mut self, len: usize) {
        self.reset();
        self.len = len;
        self.pages = (0..len.div_ceil(PAGE)).map(|_| None).collect();
    }

    fn is_open(&self) -> bool {
        self.len > 0
    }

    /// Forgets every byte received (a hash or parse failure: start over from the next
    /// chunks).
    fn forget(&mut self) {
        let len = self.len;
        self.open(len);
    }

    /// Places `bytes` at `offset`: `None` if they do not fit the manifest, else whether
    /// every byte of it is here now.
    fn place(&mut self, offset: usize, bytes: &[u8]) -> Option<bool> {
        let end = offset.checked_add(bytes.len())?;
        if end > self.len || bytes.is_empty() {
            return None;
        }
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (page, within) = (at / PAGE, at % PAGE);
            let n = rest.len().min(PAGE - within);
            let page_len = PAGE.min(self.len - page * PAGE);
            let p = self.pages[page].get_or_insert_with(|| vec![0u8; page_len].into_boxed_slice());
            p[within..within + n].copy_from_slice(&rest[..n]);
            at += n;
            rest = &rest[n..];
        }
        let (mut start, mut stop) = (offset, end);
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                stop = stop.max(e);
                self.ranges.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.ranges.range(start..).next() {
            if s > stop {
                break;
            }
            stop = stop.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, stop);
        Some(self.ranges.len() == 1 && self.ranges.get(&0) == Some(&self.len))
    }

    /// The whole manifest (call once every byte is here).
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for p in self.pages.iter().flatten() {
            out.extend_from_slice(p);
        }
        out
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
                self.assembly.open(a.manifest_len as usize);
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
        if self.manifest.is_some() || !self.assembly.is_open() {
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
        let buf = self.assembly.bytes();
        let manifest = match (blake3::hash(&buf).as_bytes() == &a.manifest_hash)
            .then(|| Manifest::parse(&buf))
        {
            // What the announce (and its signed statement) says of the manifest must hold.
            Some(Ok(m))
                if m.unit_size == a.unit_size
                    && m.units_per_block == a.units_per_block
                    && m.objects.len() as u64 == u64::from(a.object_count)
                    && m.total_bytes() == a.total_bytes =>
            {
                m
            }
            _ => {
                // A forged or corrupted chunk: start the manifest over.
                self.stats.bad_packets += 1;
                self.assembly.forget();
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
        if let Some(want) = self.cfg.expect {
            // Pinned by the manifest hash, or by the object's hash (a one-object session).
            let hash = self.announce.as_ref().map(|a| a.manifest_hash);
            let object_ok = manifest.objects.len() == 1 && manifest.objects[0].hash == want;
            if hash != Some(want) && !object_ok {
                self.reject_session();
                return;
            }
        }
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
        self.assembly.reset();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_in_any_order_and_size_assemble_the_manifest_once() {
        let len = 3 * PAGE + 17;
        let want: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut m = ManifestAssembly::default();
        m.open(len);
        // Odd-sized chunks, backwards, overlapping: complete only with the last one.
        let mut pieces: Vec<(usize, usize)> = Vec::new();
        let mut at = 0;
        let mut step = 1;
        while at < len {
            let end = (at + step).min(len);
            pieces.push((if at > 1 { at - 1 } else { at }, end));
            at = end;
            step = step % 997 + 13;
        }
        let last = pieces.len() - 1;
        for (i, &(s, e)) in pieces.iter().rev().enumerate() {
            assert_eq!(m.place(s, &want[s..e]), Some(i == last), "piece {i}");
        }
        assert_eq!(m.bytes(), want);
        assert_eq!(m.place(len - 1, &[0, 0]), None, "past the end");
    }

    #[test]
    fn one_byte_chunks_keep_one_range_each_gap_and_no_more() {
        let len = 4096;
        let mut m = ManifestAssembly::default();
        m.open(len);
        // Every other byte: 2,048 disjoint ranges.
        for i in (0..len).step_by(2) {
            assert_eq!(m.place(i, &[1]), Some(false));
        }
        assert_eq!(m.ranges.len(), len / 2);
        // Filling the gaps merges them all into one.
        for i in (1..len).step_by(2) {
            m.place(i, &[1]);
        }
        assert_eq!(m.ranges.len(), 1);
        // An announce alone allocates nothing; a chunk at most a page.
        let mut fresh = ManifestAssembly::default();
        fresh.open(64 << 20);
        assert!(fresh.pages.iter().all(Option::is_none));
        fresh.place(40 << 20, &[1; 10]);
        assert_eq!(fresh.pages.iter().flatten().count(), 1);
    }
}
