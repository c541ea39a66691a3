//! Where a receiver puts blocks, and where a server reads them from.
//!
//! The protocol core never touches files: the node layer gives it a [`BlockStore`] (a
//! preallocated file, a mapping, a cache) and a [`BlockSource`] (a mapped file, a cache).

use crate::wire::{BlockIndex, Manifest, ObjectId};

/// Content a server sends: one contiguous slice per block.
pub trait BlockSource {
    /// Bytes of one block (the manifest's block length). Called only for blocks the
    /// manifest lists.
    fn block(&self, object: ObjectId, block: BlockIndex) -> &[u8];

    /// Whether the block's bytes are here yet. A relay serves blocks as they arrive and are
    /// verified upstream: the sender neither sends nor repairs a block before it is
    /// available (its first pass waits for it). A server's own content is always available.
    fn available(&self, _object: ObjectId, _block: BlockIndex) -> bool {
        true
    }
}

/// A failure of the receiver's storage (disk full, not writable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Blocks a store holds already when it is prepared: what a resumed or repeated receive finds
/// on disk ([`BlockStore::held`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldBlocks {
    /// Verified by an earlier run, as a durable record of it says: they count as verified at
    /// once and are never fetched.
    pub verified: Vec<(ObjectId, BlockIndex)>,
    /// Possibly here (a file that existed without a record, a record that may not have
    /// reached the disk, or a record the user asked to check): hashed against the manifest
    /// before they count, fetched if they do not match.
    pub check: Vec<(ObjectId, BlockIndex)>,
}

/// Where a receiver assembles blocks.
pub trait BlockStore {
    /// Called once, when the manifest is known: make room for every object.
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError>;
    /// The bytes of one block, `len` long (the manifest's block length), to write units
    /// into and to hash. Called only after `prepare` succeeded, for blocks the manifest lists.
    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8];
    /// Writes one unit's bytes at `offset` in the block (`len` is the block's length). By
    /// default through [`BlockStore::block_mut`]; a store may write another way (the node's
    /// file store queues the write and makes it with `pwritev`, which does not zero fresh
    /// pages first as a write through a mapping does).
    fn write_unit(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        len: usize,
        offset: usize,
        bytes: &[u8],
    ) {
        self.block_mut(object, block, len)[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    /// The block was verified against its hash, or is reused as the store held it
    /// ([`BlockStore::held`]): it is final (a store may flush it, and record it).
    fn block_verified(&mut self, _object: ObjectId, _block: BlockIndex) {}
    /// Called once, right after `prepare` succeeded: the blocks the store holds already (a
    /// resumed receive). A fresh store holds none, the default.
    fn held(&mut self) -> HeldBlocks {
        HeldBlocks::default()
    }
}

/// A source over byte slices held in memory (tests, the simulator, small demos).
pub struct SliceSource<'a> {
    objects: Vec<&'a [u8]>,
    block_size: usize,
}

impl<'a> SliceSource<'a> {
    pub fn new(objects: Vec<&'a [u8]>, block_size: usize) -> Self {
        SliceSource {
            objects,
            block_size,
        }
    }
}

impl BlockSource for SliceSource<'_> {
    fn block(&self, object: ObjectId, block: BlockIndex) -> &[u8] {
        let o = self.objects[object.0 as usize];
        let start = block.0 as usize * self.block_size;
        &o[start..(start + self.block_size).min(o.len())]
    }
}

/// A store that keeps every object in memory.
#[derive(Default)]
pub struct MemStore {
    pub objects: Vec<Vec<u8>>,
    block_size: usize,
}

impl BlockStore for MemStore {
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        self.block_size = manifest.block_size() as usize;
        self.objects = manifest
            .objects
            .iter()
            .map(|o| vec![0u8; o.size as usize])
            .collect();
        Ok(())
    }

    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8] {
        let start = block.0 as usize * self.block_size;
        &mut self.objects[object.0 as usize][start..start + len]
    }
}
