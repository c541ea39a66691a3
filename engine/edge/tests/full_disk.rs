//! The disk tier on a file system that fills before the tier's budget does: a 16 KiB tmpfs the
//! test mounts (and unmounts) on a directory of its own. Needs root; off CI a test that cannot
//! mount prints why and passes, under CI it fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

mod common;

use blockcast_edge::cache::{BlockCache, BlockKey, CacheConfig, ContentId, Tier};

/// A mounted tmpfs, unmounted when dropped (also when the test fails).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn small_file_system(dir: &Path) -> Option<Mount> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs"])
        .arg(dir)
        .status();
    if matches!(status, Ok(status) if status.success()) {
        return Some(Mount(dir.to_path_buf()));
    }
    common::can_run(Some(format!(
        "cannot mount a tmpfs here (not root?): {status:?}"
    )));
    None
}

fn key(block: u32) -> BlockKey {
    BlockKey {
        object: ContentId([9; 32]),
        block,
    }
}

fn block(block: u32, len: usize) -> Arc<[u8]> {
    (0..len)
        .map(|at| (at as u32 ^ block.wrapping_mul(77)) as u8)
        .collect()
}

#[test]
fn a_full_file_system_evicts_until_the_block_fits_and_never_fails_an_insert() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = small_file_system(dir.path()) else {
        return;
    };
    // No RAM tier, and a disk budget far above the file system's 16 KiB (four 4 KiB pages).
    let config = CacheConfig {
        ram_bytes: 0,
        disk_dir: dir.path().to_path_buf(),
        disk_bytes: 1 << 20,
    };
    let mut cache = BlockCache::open(&config).unwrap();
    for index in 0..6 {
        cache.insert(key(index), block(index, 4000));
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.disk.writes, stats.disk.write_failures),
        (6, 0),
        "{stats:?}"
    );
    assert_eq!(stats.disk.evictions, 2, "{stats:?}");
    assert_eq!(cache.holds(&key(0)), None);
    for index in 2..6 {
        let expected = block(index, 4000);
        let found = cache.get(&key(index), &blake3::hash(&expected)).unwrap();
        assert_eq!((found.tier, &found.bytes[..]), (Tier::Disk, &expected[..]));
    }

    // A block larger than the whole file system empties the tier trying, then is given up.
    cache.insert(key(100), block(100, 20_000));
    let stats = cache.stats();
    assert_eq!(
        (stats.disk.write_failures, stats.disk.evictions),
        (1, 6),
        "{stats:?}"
    );
    assert_eq!(cache.holds(&key(100)), None);
    // Nothing is left behind: no block file and no partial write.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
