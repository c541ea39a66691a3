//! The manifest cache: each input file's hashes (the whole object's BLAKE3 and every block's),
//! kept between runs, so that serving a file again starts at once instead of after reading and
//! hashing all of it (about 0.3 s per GB per core here; a minute for a 100 GB image).
//!
//! An entry is found by what identifies a file's content without reading it: device, inode,
//! size, modification and status-change times (to the nanosecond), the block size and the
//! path. Any write to the file changes its status-change time, which no user call can set
//! back, so a changed file misses and is hashed again. Entries are written only when the file
//! did not change while it was hashed and has not changed for the last 2 s: file times come
//! from a coarse clock (a few ms), so a file rewritten within the same tick after it was
//! hashed would keep its times; like git's "racily clean" index entries, such young files are
//! hashed every time until they settle. The cache is best effort: an entry that cannot be read
//! or written is treated as absent, never as an error. Entries are small (32 bytes per block,
//! 32 KiB per GiB of 1 MiB blocks) and the directory can be deleted at any time.

use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"BCHC";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 8 + 8 + 4;

/// A directory of cached hashes.
#[derive(Clone, Debug)]
pub struct HashCache {
    dir: PathBuf,
    settle: std::time::Duration,
}

/// One file's hashes: the whole object's and each block's.
pub(crate) type Hashes = ([u8; 32], Vec<[u8; 32]>);

impl HashCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        HashCache {
            dir: dir.into(),
            settle: std::time::Duration::from_secs(2),
        }
    }

    /// How long a file must have been left alone before its hashes are stored (2 s).
    pub fn settle(mut self, settle: std::time::Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The default place: `$XDG_CACHE_HOME/blockcast/hashes`, else
    /// `$HOME/.cache/blockcast/hashes`; `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })?;
        Some(base.join("blockcast").join("hashes"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, path: &Path, meta: &Metadata, block_size: usize) -> PathBuf {
        let mut h = blake3::Hasher::new();
        for v in [
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
            block_size as u64,
        ] {
            h.update(&v.to_le_bytes());
        }
        let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        h.update(full.as_os_str().as_encoded_bytes());
        self.dir.join(h.finalize().to_hex().as_str())
    }

    /// The hashes of the file at `path` (whose metadata is `meta`, taken from the open file)
    /// with blocks of `block_size`, if an earlier run stored them for this very content.
    pub(crate) fn get(&self, path: &Path, meta: &Metadata, block_size: usize) -> Option<Hashes> {
        let bytes = std::fs::read(self.entry(path, meta, block_size)).ok()?;
        let blocks = usize::try_from(meta.size().div_ceil(block_size.max(1) as u64)).ok()?;
        if bytes.len() != HEADER + 32 + 32 * blocks
            || &bytes[..4] != MAGIC
            || bytes[4] != VERSION
            || bytes[5..13] != (block_size as u64).to_le_bytes()
            || bytes[13..21] != meta.size().to_le_bytes()
            || bytes[21..25] != (blocks as u32).to_le_bytes()
        {
            return None;
        }
        let body = &bytes[HEADER..];
        let whole: [u8; 32] = body[..32].try_into().ok()?;
        let block_hashes = body[32..]
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32-byte chunks"))
            .collect();
        Some((whole, block_hashes))
    }

    /// Stores the hashes of the file at `path`, computed while its metadata was `before`;
    /// `after` is its metadata once hashed. Nothing is stored if the file changed meanwhile.
    /// Best effort: failures are ignored (the next run hashes again).
    pub(crate) fn put(
        &self,
        path: &Path,
        before: &Metadata,
        after: &Metadata,
        block_size: usize,
        (whole, blocks): (&[u8; 32], &[[u8; 32]]),
    ) {
        let same = |m: &Metadata| {
            (
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        };
        let changed_at = std::time::UNIX_EPOCH
            + std::time::Duration::new(after.ctime().max(0) as u64, after.ctime_nsec() as u32);
        let young = std::time::SystemTime::now()
            .duration_since(changed_at)
            .map_or(true, |age| age < self.settle);
        if same(before) != same(after) || young || std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let mut bytes = Vec::with_capacity(HEADER + 32 + 32 * blocks.len());
        bytes.extend_from_slice(MAGIC);
        bytes.push(VERSION);
        bytes.extend_from_slice(&(block_size as u64).to_le_bytes());
        bytes.extend_from_slice(&before.size().to_le_bytes());
        bytes.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
        bytes.extend_from_slice(whole);
        for b in blocks {
            bytes.extend_from_slice(b);
        }
        let target = self.entry(path, before, block_size);
        // Written whole under a temporary name, then renamed: a reader never sees half of it.
        let tmp = target.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(&bytes));
        if written.is_err() || std::fs::rename(&tmp, &target).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bc-hashcache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_entry_is_found_until_the_file_changes() {
        let dir = temp("entry");
        let cache = HashCache::new(dir.join("cache")).settle(std::time::Duration::ZERO);
        let file = dir.join("f");
        std::fs::write(&file, vec![1u8; 3000]).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert!(cache.get(&file, &meta, 1024).is_none());
        let hashes = ([7u8; 32], vec![[1u8; 32], [2u8; 32], [3u8; 32]]);
        cache.put(&file, &meta, &meta, 1024, (&hashes.0, &hashes.1));
        assert_eq!(cache.get(&file, &meta, 1024), Some(hashes.clone()));
        // Another block size is another entry.
        assert!(cache.get(&file, &meta, 2048).is_none());
        // Rewritten with the same size: its status-change time moves (once the file clock has
        // ticked: rewrite until it has), the entry misses.
        let mut changed = meta.clone();
        for _ in 0..100_000 {
            std::fs::write(&file, vec![2u8; 3000]).unwrap();
            changed = std::fs::metadata(&file).unwrap();
            if (changed.ctime(), changed.ctime_nsec()) != (meta.ctime(), meta.ctime_nsec()) {
                break;
            }
        }
        assert_ne!(
            (changed.ctime(), changed.ctime_nsec()),
            (meta.ctime(), meta.ctime_nsec())
        );
        assert!(cache.get(&file, &changed, 1024).is_none());
        // A file that changed while it was hashed is not stored.
        cache.put(&file, &meta, &changed, 1024, (&hashes.0, &hashes.1));
        assert!(cache.get(&file, &meta, 1024) == Some(hashes.clone()));
        assert!(cache.get(&file, &changed, 1024).is_none());
        // A damaged entry is absent, not an error.
        cache.put(&file, &changed, &changed, 1024, (&hashes.0, &hashes.1));
        for e in std::fs::read_dir(dir.join("cache")).unwrap() {
            let p = e.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            b.pop();
            std::fs::write(&p, b).unwrap();
        }
        assert!(cache.get(&file, &changed, 1024).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_changed_moments_ago_is_not_stored() {
        let dir = temp("young");
        let cache = HashCache::new(dir.join("cache"));
        let file = dir.join("f");
        std::fs::write(&file, b"abc").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        let hashes = ([7u8; 32], vec![[1u8; 32]]);
        cache.put(&file, &meta, &meta, 1024, (&hashes.0, &hashes.1));
        assert!(cache.get(&file, &meta, 1024).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
