use std::path::Path;

use super::*;

const BLOCK: usize = 1000;

fn key(object: u8, block: u32) -> BlockKey {
    BlockKey {
        object: ContentId([object; 32]),
        block,
    }
}

/// Distinct bytes for every block.
fn block(key: &BlockKey) -> Arc<[u8]> {
    (0..BLOCK)
        .map(|at| (at as u32 ^ key.block.wrapping_mul(131) ^ u32::from(key.object.0[0])) as u8)
        .collect()
}

fn hash(key: &BlockKey) -> blake3::Hash {
    blake3::hash(&block(key))
}

fn open(dir: &Path, ram_blocks: u64, disk_blocks: u64) -> BlockCache {
    let config = CacheConfig {
        ram_bytes: ram_blocks * BLOCK as u64,
        disk_dir: dir.to_path_buf(),
        disk_bytes: disk_blocks * BLOCK as u64,
    };
    BlockCache::open(&config).unwrap()
}

/// The bytes of the block files in `dir`.
fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn each_tier_stays_within_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = open(dir.path(), 4, 10);
    for block in 0..50 {
        let key = key(1, block);
        cache.insert(key, self::block(&key));
        let stats = cache.stats();
        assert!(stats.ram_bytes <= 4 * BLOCK as u64, "{stats:?}");
        assert!(bytes_on_disk(dir.path()) <= 10 * BLOCK as u64);
    }
    let stats = cache.stats();
    assert_eq!(stats.disk.writes, 50);
    assert_eq!(stats.disk.evictions, 40);
    assert_eq!(stats.ram_evictions, 46);
    assert_eq!(stats.disk.write_failures, 0);
}

#[test]
fn a_block_evicted_from_ram_is_served_from_disk_then_from_ram_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = open(dir.path(), 2, 10);
    for block in 0..5 {
        let key = key(1, block);
        cache.insert(key, self::block(&key));
    }
    let first = key(1, 0);
    assert_eq!(cache.holds(&first), Some(Tier::Disk));
    let found = cache.get(&first, &hash(&first)).unwrap();
    assert_eq!(
        (found.tier, &found.bytes[..]),
        (Tier::Disk, &block(&first)[..])
    );
    assert_eq!(cache.get(&first, &hash(&first)).unwrap().tier, Tier::Ram);
    let stats = cache.stats();
    assert_eq!((stats.ram_hits, stats.disk_hits, stats.misses), (1, 1, 0));
}

#[test]
fn a_full_disk_tier_evicts_the_oldest_and_never_fails_an_insert() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = open(dir.path(), 1, 3);
    for block in 0..10 {
        let key = key(2, block);
        cache.insert(key, self::block(&key));
    }
    assert_eq!(cache.stats().disk.evictions, 7);
    for block in 0..7 {
        assert_eq!(cache.holds(&key(2, block)), None, "block {block}");
    }
    for block in 7..10 {
        let key = key(2, block);
        assert!(cache.get(&key, &hash(&key)).is_some(), "block {block}");
    }
    // Unknown blocks are misses, not errors.
    assert!(cache.get(&key(3, 0), &hash(&key(3, 0))).is_none());
}

#[test]
fn the_disk_tier_is_taken_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<_> = (0..4).map(|block| key(4, block)).collect();
    {
        let mut cache = open(dir.path(), 2, 10);
        for key in &keys {
            cache.insert(*key, block(key));
        }
    }
    // A write torn by a crash is cleared away; a file that is not ours is left alone.
    std::fs::write(
        dir.path().join(format!("{}.tmp", cache_name(&key(4, 9)))),
        b"torn",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a block").unwrap();
    let mut cache = open(dir.path(), 2, 10);
    let stats = cache.stats();
    assert_eq!((stats.disk.restored, stats.disk.partial_removed), (4, 1));
    assert_eq!(stats.disk_bytes, 4 * BLOCK as u64);
    for key in &keys {
        let found = cache.get(key, &hash(key)).unwrap();
        assert_eq!(
            (found.tier, &found.bytes[..]),
            (Tier::Disk, &block(key)[..])
        );
    }
    assert!(dir.path().join("notes.txt").exists());
}

fn cache_name(key: &BlockKey) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1, 1);
    cache
        .disk_path(key)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_corrupted_block_on_disk_is_refused_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (key(5, 0), key(5, 1));
    {
        let mut cache = open(dir.path(), 2, 10);
        cache.insert(bad, block(&bad));
        cache.insert(good, block(&good));
    }
    let mut cache = open(dir.path(), 2, 10);
    let path = cache.disk_path(&bad);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[BLOCK / 2] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    assert!(cache.get(&bad, &hash(&bad)).is_none());
    assert_eq!(cache.stats().disk.corrupt, 1);
    assert!(!path.exists());
    assert_eq!(cache.holds(&bad), None);
    assert_eq!(cache.get(&good, &hash(&good)).unwrap().tier, Tier::Disk);
}

#[test]
fn a_block_that_does_not_match_the_callers_hash_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = open(dir.path(), 1, 10);
    let (first, second) = (key(6, 0), key(6, 1));
    cache.insert(first, block(&first));
    cache.insert(second, block(&second));
    // `first` is on disk only now; asked for with another block's hash, it is refused.
    assert_eq!(cache.holds(&first), Some(Tier::Disk));
    assert!(cache.get(&first, &hash(&second)).is_none());
    assert_eq!(cache.stats().disk.corrupt, 1);
}

#[test]
fn a_restart_with_a_smaller_budget_evicts_down_to_it_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut cache = open(dir.path(), 1, 10);
        for block in 0..6 {
            let key = key(7, block);
            cache.insert(key, self::block(&key));
            // Distinct modification times, in insertion order.
            let when = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1000 + u64::from(block));
            let file = std::fs::File::options()
                .write(true)
                .open(cache.disk_path(&key))
                .unwrap();
            file.set_modified(when).unwrap();
        }
    }
    let cache = open(dir.path(), 1, 2);
    assert_eq!(cache.stats().disk.evictions, 4);
    assert_eq!(bytes_on_disk(dir.path()), 2 * BLOCK as u64);
    assert_eq!(cache.holds(&key(7, 5)), Some(Tier::Disk));
    assert_eq!(cache.holds(&key(7, 4)), Some(Tier::Disk));
}

#[test]
fn a_block_larger_than_a_tier_is_skipped_by_it_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = open(dir.path(), 0, 0);
    let key = key(8, 0);
    cache.insert(key, block(&key));
    assert_eq!(cache.holds(&key), None);
    assert_eq!(cache.stats().disk.write_failures, 1);
    assert!(cache.get(&key, &hash(&key)).is_none());
}

#[test]
fn a_disk_read_done_apart_from_the_cache_is_promoted_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = open(dir.path(), 1, 10);
    let (first, second) = (key(9, 0), key(9, 1));
    cache.insert(first, block(&first));
    cache.insert(second, block(&second));
    let Lookup::Disk(read) = cache.lookup(&first) else {
        panic!("the first block is on disk only");
    };
    // The read needs nothing of the cache: the node does it outside its lock.
    let load = read.read(&hash(&first));
    let found = cache.finish_read(&first, load).unwrap();
    assert_eq!(
        (found.tier, &found.bytes[..]),
        (Tier::Disk, &block(&first)[..])
    );
    assert!(matches!(cache.lookup(&first), Lookup::Ram(_)));

    let Lookup::Disk(read) = cache.lookup(&second) else {
        panic!("the second block was evicted from RAM by the first");
    };
    assert!(cache
        .finish_read(&second, read.read(&hash(&first)))
        .is_none());
    assert_eq!(cache.holds(&second), None);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.ram_hits,
            stats.disk_hits,
            stats.misses,
            stats.disk.corrupt
        ),
        (1, 1, 1, 1)
    );
}
