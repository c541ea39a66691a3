//! The edge's block cache: a RAM tier and a disk tier under one controller.
//!
//! Blocks arrive into RAM (clients are served from there) and are written through to disk at
//! once, so a block evicted from RAM is still on disk. Each tier is bounded by bytes and evicts
//! by S3-FIFO ([`s3fifo`]), whose ghost queue admits a block to the main queue only when it is
//! asked for again: a client streaming an object once does not flush what others read again.
//! A lookup returns the block from RAM, or reads it from disk, checks it against the BLAKE3 hash
//! the caller gives (from the manifest) and puts it back in RAM. A block that fails the check is
//! deleted and reported as a miss. RAM holds only blocks the caller inserted as verified or that
//! passed that check, so a RAM hit is not hashed again.
//!
//! Blocks are keyed by content ([`ContentId`], the object's BLAKE3 hash from its manifest, and
//! the block index), so the disk index needs no session state to survive a restart.
//!
//! The controller is single-threaded (`&mut self`); the node shares it behind a lock or shards
//! it by key. A lookup can leave its disk read and hash check outside that lock
//! ([`BlockCache::lookup`], [`DiskRead::read`], [`BlockCache::finish_read`]). Writes to disk
//! happen in the caller's thread.

pub mod disk;
pub mod s3fifo;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use disk::{DiskRead, Load};
use disk::{DiskStats, DiskTier};
use s3fifo::S3Fifo;

/// An object's identity in the cache: its whole-object BLAKE3 hash from the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

/// One block of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The object.
    pub object: ContentId,
    /// The block's index in the object (its block address).
    pub block: u32,
}

/// The tiers' sizes and the disk tier's place.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The RAM tier's budget in bytes.
    pub ram_bytes: u64,
    /// The directory of the disk tier.
    pub disk_dir: PathBuf,
    /// The disk tier's budget in bytes.
    pub disk_bytes: u64,
}

/// Opening the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file system operation on the disk tier's directory.
    #[error("cache directory {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Which tier served a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Main memory.
    Ram,
    /// The disk tier (the block is in RAM again now).
    Disk,
}

/// Where a lookup found a block.
#[derive(Debug)]
pub enum Lookup {
    /// In RAM: here it is.
    Ram(Arc<[u8]>),
    /// On disk: read it (outside the lock), then [`BlockCache::finish_read`].
    Disk(DiskRead),
    /// In neither tier.
    Miss,
}

/// A block from the cache.
#[derive(Clone, Debug)]
pub struct CachedBlock {
    /// Its bytes.
    pub bytes: Arc<[u8]>,
    /// Where it was found.
    pub tier: Tier,
}

/// What the cache has done, and what it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups served from RAM.
    pub ram_hits: u64,
    /// Lookups served from disk.
    pub disk_hits: u64,
    /// Lookups neither tier could serve (corrupt blocks included).
    pub misses: u64,
    /// Blocks evicted from RAM.
    pub ram_evictions: u64,
    /// Bytes held in RAM.
    pub ram_bytes: u64,
    /// Bytes held on disk.
    pub disk_bytes: u64,
    /// The disk tier's own counters.
    pub disk: DiskStats,
}

/// The RAM tier: blocks in memory under S3-FIFO.
#[derive(Debug)]
struct RamTier {
    policy: S3Fifo<BlockKey>,
    blocks: HashMap<BlockKey, Arc<[u8]>>,
    evictions: u64,
}

impl RamTier {
    fn insert(&mut self, key: BlockKey, block: Arc<[u8]>) {
        for victim in self.policy.insert(key, block.len() as u64) {
            if victim != key {
                self.blocks.remove(&victim);
                self.evictions += 1;
            }
        }
        if self.policy.contains(&key) {
            self.blocks.insert(key, block);
        }
    }

    fn get(&mut self, key: &BlockKey) -> Option<Arc<[u8]>> {
        let block = self.blocks.get(key)?;
        self.policy.touch(key);
        Some(block.clone())
    }
}

/// The controller over both tiers.
#[derive(Debug)]
pub struct BlockCache {
    ram: RamTier,
    disk: DiskTier,
    stats: CacheStats,
}

impl BlockCache {
    /// Opens the cache; the disk tier takes back what its directory holds.
    pub fn open(config: &CacheConfig) -> Result<Self, CacheError> {
        Ok(BlockCache {
            ram: RamTier {
                policy: S3Fifo::new(config.ram_bytes),
                blocks: HashMap::new(),
                evictions: 0,
            },
            disk: DiskTier::open(&config.disk_dir, config.disk_bytes)?,
            stats: CacheStats::default(),
        })
    }

    /// Adds a verified block: into RAM, and written through to disk. Never fails: a block the
    /// disk cannot take stays in RAM only (counted in [`DiskStats::write_failures`]).
    pub fn insert(&mut self, key: BlockKey, block: Arc<[u8]>) {
        self.disk.store(key, &block);
        self.ram.insert(key, block);
    }

    /// The block, from RAM, or from disk once its bytes match `hash`.
    pub fn get(&mut self, key: &BlockKey, hash: &blake3::Hash) -> Option<CachedBlock> {
        match self.lookup(key) {
            Lookup::Ram(bytes) => Some(CachedBlock {
                bytes,
                tier: Tier::Ram,
            }),
            Lookup::Disk(read) => {
                let load = read.read(hash);
                self.finish_read(key, load)
            }
            Lookup::Miss => None,
        }
    }

    /// Step one of a lookup whose disk read happens outside the cache's lock: the block from
    /// RAM, or the read to do ([`DiskRead::read`]), whose result goes to
    /// [`BlockCache::finish_read`]. [`BlockCache::get`] does all three.
    pub fn lookup(&mut self, key: &BlockKey) -> Lookup {
        if let Some(bytes) = self.ram.get(key) {
            self.stats.ram_hits += 1;
            return Lookup::Ram(bytes);
        }
        match self.disk.begin_read(key) {
            Some(read) => Lookup::Disk(read),
            None => {
                self.stats.misses += 1;
                Lookup::Miss
            }
        }
    }

    /// Step three: records what a disk read found; a verified block goes back into RAM and is
    /// returned.
    pub fn finish_read(&mut self, key: &BlockKey, load: Load) -> Option<CachedBlock> {
        self.disk.finish_read(key, &load);
        let Load::Hit(bytes) = load else {
            self.stats.misses += 1;
            return None;
        };
        self.stats.disk_hits += 1;
        let bytes: Arc<[u8]> = bytes.into();
        self.ram.insert(*key, bytes.clone());
        Some(CachedBlock {
            bytes,
            tier: Tier::Disk,
        })
    }

    /// Where the block is, without reading it.
    pub fn holds(&self, key: &BlockKey) -> Option<Tier> {
        if self.ram.blocks.contains_key(key) {
            Some(Tier::Ram)
        } else if self.disk.contains(key) {
            Some(Tier::Disk)
        } else {
            None
        }
    }

    /// The file a block is (or would be) written to on disk.
    pub fn disk_path(&self, key: &BlockKey) -> PathBuf {
        self.disk.path(key)
    }

    /// What the cache has done and holds.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            ram_evictions: self.ram.evictions,
            ram_bytes: self.ram.policy.bytes(),
            disk_bytes: self.disk.bytes(),
            disk: self.disk.stats(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests;
