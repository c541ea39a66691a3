//! `blockcast hash` and the hash cache `serve` uses: a file's hashes are stored once it has
//! settled, found again while it is unchanged, and never used once it changed.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `blockcast hash FILE --hash-cache DIR --json`: (BLAKE3 it printed, objects from the cache).
fn hash(dir: &Path, name: &str, file: &Path, cache: &Path) -> (String, u64) {
    let mut p = Proc::spawn(
        dir,
        name,
        [
            "hash".as_ref(),
            file.as_os_str(),
            "--hash-cache".as_ref(),
            cache.as_os_str(),
            "--json".as_ref(),
        ],
    );
    p.expect_code(Duration::from_secs(60), 0);
    let v = p.json();
    (
        v["objects"][0]["blake3"].as_str().unwrap().to_string(),
        v["from_cache"].as_u64().unwrap(),
    )
}

/// Waits until the file has not changed for the cache's 2 s (it stores only settled files).
fn wait_settled(file: &Path) {
    wait_until(Duration::from_secs(10), "the file to settle", || {
        let m = std::fs::metadata(file).unwrap();
        let changed = UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
        SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|age| age > Duration::from_millis(2100))
    });
}

#[test]
fn hashes_are_cached_while_the_file_is_unchanged() {
    let s = Scratch::new("cache");
    let (file, cache) = (s.path("image.bin"), s.path("cache"));
    write_sample(&file, 9 << 20, 1);
    let want = hash_file(&file).to_hex().to_string();

    // Young: hashed, not stored.
    assert_eq!(hash(&s.0, "young", &file, &cache), (want.clone(), 0));
    assert_eq!(hash(&s.0, "young-again", &file, &cache), (want.clone(), 0));
    wait_settled(&file);
    // Settled: hashed and stored, then found.
    assert_eq!(hash(&s.0, "first", &file, &cache), (want.clone(), 0));
    assert_eq!(hash(&s.0, "second", &file, &cache), (want.clone(), 1));

    // Rewritten in place, same size: the entry is not used, the new content is hashed.
    write_sample(&file, 9 << 20, 2);
    let new = hash_file(&file).to_hex().to_string();
    assert_ne!(new, want);
    assert_eq!(hash(&s.0, "changed", &file, &cache), (new.clone(), 0));
    wait_settled(&file);
    assert_eq!(hash(&s.0, "changed-first", &file, &cache), (new.clone(), 0));
    assert_eq!(hash(&s.0, "changed-second", &file, &cache), (new, 1));
}
