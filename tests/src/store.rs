//! Receiver stores for the simulator.

use std::collections::HashMap;
use std::sync::Arc;

use blockcast_proto::wire::{BlockIndex, Manifest, ObjectId};
use blockcast_proto::{BlockStore, MemStore, StoreError};

/// How simulated receivers keep what they receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Every byte in memory; checked byte for byte against the source at the end.
    Memory,
    /// Only blocks under assembly are kept; each verified block is hashed again by the store
    /// and compared with the source's own hash, then dropped. For runs with thousands of
    /// receivers, whose full copies would not fit in memory.
    Hashed,
}

/// A simulated receiver's store.
pub struct SimStore {
    kind: StoreKind,
    mem: MemStore,
    open: HashMap<(u32, u32), Vec<u8>>,
    truth: Arc<Vec<Vec<[u8; 32]>>>,
    block_size: usize,
    bad: u64,
    verified: u64,
}

impl SimStore {
    /// `truth` is the source's block hashes, computed by the simulator from the content.
    pub fn new(kind: StoreKind, truth: Arc<Vec<Vec<[u8; 32]>>>, block_size: usize) -> Self {
        SimStore {
            kind,
            mem: MemStore::default(),
            open: HashMap::new(),
            truth,
            block_size,
            bad: 0,
            verified: 0,
        }
    }

    /// Blocks reported verified whose bytes do not hash to the source's.
    pub fn bad_blocks(&self) -> u64 {
        self.bad
    }

    /// A block as held in memory ([`StoreKind::Memory`]); None for a hashed store, which keeps
    /// only blocks under assembly.
    pub(crate) fn block(&self, object: ObjectId, block: BlockIndex) -> Option<&[u8]> {
        match self.kind {
            StoreKind::Memory => {
                let o = self.mem.objects.get(object.0 as usize)?;
                let start = block.0 as usize * self.block_size;
                o.get(start..(start + self.block_size).min(o.len()))
            }
            StoreKind::Hashed => None,
        }
    }

    /// Compares what the store holds with the source.
    pub fn equals(&self, content: &[Vec<u8>]) -> Result<(), String> {
        match self.kind {
            StoreKind::Memory => {
                for (i, c) in content.iter().enumerate() {
                    if self.mem.objects.get(i) != Some(c) {
                        return Err(format!("object {i} differs from the source"));
                    }
                }
                Ok(())
            }
            StoreKind::Hashed => {
                let total: usize = self.truth.iter().map(Vec::len).sum();
                if self.verified as usize == total && self.bad == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "{} of {total} blocks verified by the store, {} bad",
                        self.verified, self.bad
                    ))
                }
            }
        }
    }
}

impl BlockStore for SimStore {
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        match self.kind {
            StoreKind::Memory => self.mem.prepare(manifest),
            StoreKind::Hashed => Ok(()),
        }
    }

    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8] {
        match self.kind {
            StoreKind::Memory => self.mem.block_mut(object, block, len),
            StoreKind::Hashed => self
                .open
                .entry((object.0, block.0))
                .or_insert_with(|| vec![0u8; len]),
        }
    }

    fn block_verified(&mut self, object: ObjectId, block: BlockIndex) {
        let truth = self.truth[object.0 as usize][block.0 as usize];
        let hash = match self.kind {
            StoreKind::Memory => blake3::hash(self.block(object, block).expect("object prepared")),
            StoreKind::Hashed => {
                blake3::hash(&self.open.remove(&(object.0, block.0)).unwrap_or_default())
            }
        };
        self.verified += 1;
        if hash.as_bytes() != &truth {
            self.bad += 1;
        }
    }
}
