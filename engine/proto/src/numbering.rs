//! Global block numbering: every block of a session has one number, running over the
//! manifest's objects in order (object 0's blocks first). Both sides count blocks this way
//! (status matrix rows, receive status, the first pass's order, stripes: block `n` belongs
//! to stripe `n mod S`); this is the one place that does the arithmetic.

use crate::wire::{BlockIndex, Manifest, ObjectId};

/// A block's address: its object and its index in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockAddr {
    pub object: ObjectId,
    pub block: BlockIndex,
}

/// Block numbers and lengths of one manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockNumbering {
    /// Number of each object's first block.
    base: Vec<u64>,
    /// Blocks per object.
    counts: Vec<u64>,
    /// Object sizes in bytes.
    sizes: Vec<u64>,
    total: u64,
    unit_size: usize,
    block_size: usize,
}

impl BlockNumbering {
    pub fn new(manifest: &Manifest) -> Self {
        let mut base = Vec::with_capacity(manifest.objects.len());
        let mut total = 0u64;
        for o in &manifest.objects {
            base.push(total);
            total += o.block_hashes.len() as u64;
        }
        BlockNumbering {
            counts: manifest
                .objects
                .iter()
                .map(|o| o.block_hashes.len() as u64)
                .collect(),
            sizes: manifest.objects.iter().map(|o| o.size).collect(),
            base,
            total,
            unit_size: usize::from(manifest.unit_size).max(1),
            block_size: manifest.block_size() as usize,
        }
    }

    /// Blocks in the session.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Objects in the session.
    pub fn objects(&self) -> usize {
        self.base.len()
    }

    pub fn unit_size(&self) -> usize {
        self.unit_size
    }

    /// Bytes in a whole block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The number of block `block` of `object`, if the manifest has it.
    pub fn seq(&self, object: ObjectId, block: BlockIndex) -> Option<u64> {
        let o = object.0 as usize;
        let count = *self.counts.get(o)?;
        (u64::from(block.0) < count).then(|| self.base[o] + u64::from(block.0))
    }

    /// The address of block number `seq` (`seq` below [`BlockNumbering::total`]).
    pub fn addr(&self, seq: u64) -> BlockAddr {
        let o = self.base.partition_point(|&b| b <= seq).saturating_sub(1);
        // Empty objects share their base with the next: take the last object starting at or
        // before `seq` that has blocks.
        let o = (0..=o)
            .rev()
            .find(|&i| self.counts[i] > 0 && self.base[i] <= seq)
            .unwrap_or(0);
        BlockAddr {
            object: ObjectId(o as u32),
            block: BlockIndex(seq.saturating_sub(self.base.get(o).copied().unwrap_or(0)) as u32),
        }
    }

    /// One past the last block number of `object` (its first block's number if it is empty).
    pub fn object_end(&self, object: ObjectId) -> u64 {
        let o = object.0 as usize;
        match (self.base.get(o), self.counts.get(o)) {
            (Some(b), Some(c)) => b + c,
            _ => self.total,
        }
    }

    /// Bytes in block number `seq` (the last block of an object may be short; 0 if none).
    pub fn block_len(&self, seq: u64) -> usize {
        if seq >= self.total {
            return 0;
        }
        let a = self.addr(seq);
        let size = self.sizes[a.object.0 as usize];
        let start = u64::from(a.block.0) * self.block_size as u64;
        (size.saturating_sub(start)).min(self.block_size as u64) as usize
    }

    /// Where block number `seq` starts in its object, in bytes.
    pub fn block_offset(&self, seq: u64) -> u64 {
        u64::from(self.addr(seq).block.0) * self.block_size as u64
    }

    /// Units in block number `seq`.
    pub fn units_in(&self, seq: u64) -> u16 {
        self.block_len(seq).div_ceil(self.unit_size) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ObjectEntry;

    fn manifest(sizes: &[u64]) -> Manifest {
        let block = 4 * 8u64;
        Manifest {
            unit_size: 4,
            units_per_block: 8,
            objects: sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| ObjectEntry {
                    name: format!("o{i}"),
                    size: s,
                    hash: [0; 32],
                    block_hashes: vec![[0; 32]; s.div_ceil(block) as usize],
                })
                .collect(),
        }
    }

    #[test]
    fn numbers_run_over_objects_in_order_and_skip_empty_ones() {
        let n = BlockNumbering::new(&manifest(&[70, 0, 32, 1]));
        assert_eq!(n.total(), 3 + 1 + 1);
        assert_eq!(n.seq(ObjectId(0), BlockIndex(2)), Some(2));
        assert_eq!(n.seq(ObjectId(0), BlockIndex(3)), None);
        assert_eq!(n.seq(ObjectId(1), BlockIndex(0)), None);
        assert_eq!(n.seq(ObjectId(2), BlockIndex(0)), Some(3));
        assert_eq!(n.seq(ObjectId(9), BlockIndex(0)), None);
        for seq in 0..n.total() {
            let a = n.addr(seq);
            assert_eq!(n.seq(a.object, a.block), Some(seq), "block {seq}");
        }
        assert_eq!(n.block_len(2), 70 - 64);
        assert_eq!(n.units_in(2), 2);
        assert_eq!(n.block_len(4), 1);
        assert_eq!(n.block_len(5), 0);
        assert_eq!(n.object_end(ObjectId(0)), 3);
        assert_eq!(n.object_end(ObjectId(1)), 3);
        assert_eq!(n.block_offset(1), 32);
    }
}
