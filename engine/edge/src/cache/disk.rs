//! The disk tier: one file per block in a directory, bounded by bytes, evicted by S3-FIFO.
//!
//! A block is written to `NAME.tmp` and renamed to `NAME` (`<object hex>-<block hex>.blk`), so
//! a name that exists held a whole write; there is no fsync, because a block read back is
//! checked against its BLAKE3 hash before use and a torn or decayed file is deleted, not served.
//! The index is the directory: opening the tier lists it, deletes leftover `.tmp` files, and
//! takes every block file back (oldest modification first, so the oldest leave first),
//! evicting down to the budget. Files with other names are not ours and are left alone.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::s3fifo::S3Fifo;
use super::{BlockKey, CacheError, ContentId};

const BLOCK_SUFFIX: &str = ".blk";
const TMP_SUFFIX: &str = ".tmp";

/// What the disk tier has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Blocks found in the directory when it was opened.
    pub restored: u64,
    /// Leftover partial writes deleted when it was opened.
    pub partial_removed: u64,
    /// Blocks written.
    pub writes: u64,
    /// Blocks that could not be written even after evicting (they stay in RAM only).
    pub write_failures: u64,
    /// Blocks evicted to keep within the budget or to make room on a full file system.
    pub evictions: u64,
    /// Blocks read back whose hash did not match: deleted, never served.
    pub corrupt: u64,
}

/// What reading a block back gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Load {
    /// The block, verified.
    Hit(Vec<u8>),
    /// Not held.
    Miss,
    /// Held, but its bytes do not match the hash: deleted.
    Corrupt,
}

/// A read of one block file that touches no cache state.
#[derive(Clone, Debug)]
pub struct DiskRead {
    path: PathBuf,
}

impl DiskRead {
    /// Reads the file and checks it against `hash` (the block's BLAKE3 from the manifest).
    pub fn read(&self, hash: &blake3::Hash) -> Load {
        match fs::read(&self.path) {
            Ok(bytes) if blake3::hash(&bytes) == *hash => Load::Hit(bytes),
            Ok(_) => Load::Corrupt,
            Err(_) => Load::Miss,
        }
    }
}

/// Block files in one directory under one byte budget.
#[derive(Debug)]
pub struct DiskTier {
    dir: PathBuf,
    policy: S3Fifo<BlockKey>,
    stats: DiskStats,
}

impl DiskTier {
    /// Opens (creating it if needed) the tier in `dir` with a budget of `capacity` bytes, and
    /// takes back the blocks already there.
    pub fn open(dir: &Path, capacity: u64) -> Result<Self, CacheError> {
        let io = |op, source| CacheError::Io {
            op,
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(|error| io("create", error))?;
        let mut tier = DiskTier {
            dir: dir.to_path_buf(),
            policy: S3Fifo::new(capacity),
            stats: DiskStats::default(),
        };
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(|error| io("list", error))? {
            let entry = entry.map_err(|error| io("list", error))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.ends_with(TMP_SUFFIX) && parse_name(name.trim_end_matches(TMP_SUFFIX)).is_some()
            {
                tier.stats.partial_removed += u64::from(fs::remove_file(entry.path()).is_ok());
            } else if let (Some(key), Ok(meta)) = (parse_name(name), entry.metadata()) {
                found.push((
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    key,
                    meta.len(),
                ));
            }
        }
        found.sort_by_key(|(modified, _, _)| *modified);
        for (_, key, len) in found {
            tier.stats.restored += 1;
            for victim in tier.policy.insert(key, len) {
                tier.delete(victim);
            }
        }
        Ok(tier)
    }

    /// What the tier has done.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// The bytes of the blocks held.
    pub fn bytes(&self) -> u64 {
        self.policy.bytes()
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.policy.contains(key)
    }

    /// Writes a block, evicting others to stay within the budget and, if the file system is
    /// full, until it fits. Never fails the caller: false when the block could not be written.
    pub fn store(&mut self, key: BlockKey, bytes: &[u8]) -> bool {
        if self.policy.contains(&key) {
            // Content-addressed: the same key holds the same bytes.
            return true;
        }
        for victim in self.policy.insert(key, bytes.len() as u64) {
            if victim == key {
                self.stats.write_failures += 1;
                return false;
            }
            self.delete(victim);
        }
        loop {
            match write_block(&self.path(&key), bytes) {
                Ok(()) => {
                    self.stats.writes += 1;
                    return true;
                }
                Err(error) if error.kind() == ErrorKind::StorageFull => match self.policy.evict() {
                    Some(victim) if victim != key => self.delete(victim),
                    _ => break,
                },
                Err(_) => break,
            }
        }
        self.policy.remove(&key);
        self.stats.write_failures += 1;
        false
    }

    /// Reads a block back and checks it against `hash`; a block that does not match is deleted.
    pub fn load(&mut self, key: &BlockKey, hash: &blake3::Hash) -> Load {
        let Some(read) = self.begin_read(key) else {
            return Load::Miss;
        };
        let load = read.read(hash);
        self.finish_read(key, &load);
        load
    }

    /// The read to do for a held block, which needs nothing of the tier (so the node can do it
    /// outside the cache's lock); hand what it finds to [`DiskTier::finish_read`].
    pub fn begin_read(&self, key: &BlockKey) -> Option<DiskRead> {
        self.policy.contains(key).then(|| DiskRead {
            path: self.path(key),
        })
    }

    /// Records what a read found: a verified block counts as a use, a missing file is forgotten,
    /// a corrupt one is deleted. A block evicted while it was being read stays evicted; one
    /// evicted and written again meanwhile may be deleted with the corrupt copy (a cache may
    /// lose a block, never serve a bad one).
    pub fn finish_read(&mut self, key: &BlockKey, load: &Load) {
        match load {
            Load::Hit(_) => {
                self.policy.touch(key);
            }
            Load::Miss => {
                self.policy.remove(key);
            }
            Load::Corrupt => {
                self.stats.corrupt += 1;
                if self.policy.remove(key) {
                    let _ = fs::remove_file(self.path(key));
                }
            }
        }
    }

    /// The file holding `key`.
    pub fn path(&self, key: &BlockKey) -> PathBuf {
        self.dir.join(file_name(key))
    }

    fn delete(&mut self, victim: BlockKey) {
        self.stats.evictions += 1;
        // A file already gone is what eviction wants.
        let _ = fs::remove_file(self.path(&victim));
    }
}

fn write_block(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn file_name(key: &BlockKey) -> String {
    let hex: String = key
        .object
        .0
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{hex}-{:08x}{BLOCK_SUFFIX}", key.block)
}

fn parse_name(name: &str) -> Option<BlockKey> {
    let (hex, block) = name.strip_suffix(BLOCK_SUFFIX)?.split_once('-')?;
    if hex.len() != 64 || block.len() != 8 {
        return None;
    }
    let mut object = [0; 32];
    for (byte, pair) in object.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(BlockKey {
        object: ContentId(object),
        block: u32::from_str_radix(block, 16).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_reads_back_as_its_key_and_other_names_are_not_ours() {
        let key = BlockKey {
            object: ContentId([0xa5; 32]),
            block: 0x1234,
        };
        assert_eq!(parse_name(&file_name(&key)), Some(key));
        assert_eq!(parse_name("notes.txt"), None);
        assert_eq!(
            parse_name(&format!("{}-zz{BLOCK_SUFFIX}", "0".repeat(64))),
            None
        );
    }
}
