//! An origin's catalog directory: every regular file under it is an object, named by its path
//! from the directory. A scanner thread walks the directory every `rescan`, hashes new and
//! changed files in the background (through the hash cache when there is one) and publishes a
//! snapshot; names still being hashed are published as not ready.
//!
//! A file is hashed once it has been left alone for `settle` (a copy still being written is
//! not published half-way); names with a component that starts with `.` are not published
//! (temporary files, the state directories of agents and fetches). A file whose identity
//! (device, inode, size, modification and change times) differs from the one it was hashed
//! with is hashed again; a file that disappears leaves the catalog at the next scan.
//!
//! With a critical directory ([`ScanConfig::critical`]), each file that enters the catalog and
//! is an MPEG-TS with H.264 or H.265 video also gets its key-frame rendition (the filter the
//! edge runs, `blockcast_edge::ts::CriticalFilter`), made right after the file is hashed,
//! written to `DIR/<BLAKE3 of the file>.ts` and published as a second object named
//! [`critical_name`] of the file's BLAKE3: the name links it to the full object's content, so
//! an edge that holds an object knows which rendition belongs to it whatever the object's name.
//! Names that begin with `.` never come from the directory, so no file can take that name.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use blockcast_proto::wire::origin::{Catalog, CatalogEntry};
use blockcast_proto::wire::ObjectEntry;

use crate::content::Input;
use crate::hashcache::HashCache;

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The file at `path` now, if it is a regular file.
    pub fn at(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        m.is_file().then(|| FileId::of(&m))
    }

    fn changed_at(&self) -> SystemTime {
        let (s, ns) = self.ctime.max(self.mtime);
        SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
    }
}

/// One hashed object of the catalog.
#[derive(Clone, Debug)]
pub struct CatalogObject {
    pub path: PathBuf,
    pub id: FileId,
    /// The manifest entry (its BLAKE3 and every block's, for the catalog's block size).
    pub entry: Arc<ObjectEntry>,
}

/// What the scanner publishes.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub catalog: Catalog,
    /// Hashed objects by name.
    pub objects: BTreeMap<String, CatalogObject>,
    /// Names found but not hashed yet.
    pub unready: Vec<String>,
    /// When this catalog was made, Unix seconds.
    pub issued: u64,
}

/// How the scanner works.
#[derive(Clone, Debug)]
pub struct ScanConfig {
    pub dir: PathBuf,
    pub block_size: usize,
    pub rescan: Duration,
    pub settle: Duration,
    pub hash_cache: Option<HashCache>,
    /// Make and publish each MPEG-TS file's critical rendition, kept in this directory.
    pub critical: Option<PathBuf>,
}

/// Where critical renditions are listed: `.critical/<BLAKE3 of the full object, hex>`.
pub const CRITICAL_PREFIX: &str = ".critical/";

/// The catalog name of the critical rendition of the object whose BLAKE3 is `full`.
pub fn critical_name(full: &[u8; 32]) -> String {
    format!("{CRITICAL_PREFIX}{}", blockcast_proto::auth::hex(full))
}

/// The shared latest snapshot: the scanner replaces it, readers take a clone of the `Arc`.
#[derive(Default)]
pub struct Shared {
    latest: Mutex<Arc<Snapshot>>,
    /// Bumped with every new snapshot.
    version: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn latest(&self) -> (u64, Arc<Snapshot>) {
        let g = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        // Acquire: pairs with the scanner's Release after it replaced the snapshot.
        (self.version.load(Ordering::Acquire), g.clone())
    }

    fn publish(&self, s: Snapshot) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
        self.version.fetch_add(1, Ordering::Release);
    }
}

/// Every regular file under `dir`, by name, skipping names with a component starting with
/// `.` and anything that is not a directory or a regular file (symbolic links are not
/// followed).
pub fn walk(dir: &Path) -> BTreeMap<String, (PathBuf, FileId)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let full = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push((e.path(), full));
            } else if ft.is_file() {
                if let Ok(m) = e.metadata() {
                    if blockcast_proto::wire::valid_name(&full) {
                        out.insert(full, (e.path(), FileId::of(&m)));
                    }
                }
            }
        }
    }
    out
}

/// Runs the scanner until `stop`: scans at once, then every `rescan`.
pub fn run(cfg: ScanConfig, shared: &Shared, stop: &AtomicBool) {
    let mut objects: BTreeMap<String, CatalogObject> = BTreeMap::new();
    // The critical renditions, by the full object's name.
    let mut critical: BTreeMap<String, CatalogObject> = BTreeMap::new();
    let mut generation = 0u64;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let found = walk(&cfg.dir);
        let now = SystemTime::now();
        let mut changed = first;
        first = false;
        // Gone, or changed since hashed: out (hashed again below if still there).
        let before = objects.len();
        objects.retain(|name, o| found.get(name).is_some_and(|(_, id)| *id == o.id));
        critical.retain(|name, _| objects.contains_key(name));
        changed |= objects.len() != before;
        let mut todo: Vec<(String, PathBuf, FileId)> = found
            .iter()
            .filter(|(n, _)| !objects.contains_key(*n))
            .map(|(n, (p, id))| (n.clone(), p.clone(), *id))
            .collect();
        let unready: Vec<String> = todo.iter().map(|(n, ..)| n.clone()).collect();
        if changed || !unready.is_empty() {
            generation = publish(shared, &objects, &critical, &unready, generation);
        }
        // Hash what has settled, one file at a time, publishing after each.
        todo.retain(|(_, _, id)| {
            now.duration_since(id.changed_at())
                .is_ok_and(|age| age >= cfg.settle)
        });
        for (name, path, id) in todo {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let input = Input {
                path: path.clone(),
                name: name.clone(),
            };
            match crate::hash_inputs(&[input], cfg.block_size, cfg.hash_cache.as_ref()) {
                // Published only if the file did not change while it was hashed.
                Ok((mut entries, _)) if FileId::at(&path) == Some(id) && entries.len() == 1 => {
                    let entry = Arc::new(entries.remove(0));
                    let obj = CatalogObject { path, id, entry };
                    if let Some(dir) = &cfg.critical {
                        if let Some(c) = make_critical(&cfg, dir, &name, &obj) {
                            critical.insert(name.clone(), c);
                        }
                    }
                    objects.insert(name.clone(), obj);
                    changed = true;
                    let unready: Vec<String> = found
                        .keys()
                        .filter(|n| !objects.contains_key(*n))
                        .cloned()
                        .collect();
                    generation = publish(shared, &objects, &critical, &unready, generation);
                }
                Ok(_) => tracing::debug!(%name, "changed while hashed: hashed again later"),
                Err(e) => tracing::warn!(%name, "cannot hash: {e}"),
            }
        }
        // Every file hashed and its rendition made: what else the directory holds belongs to
        // objects that left the catalog (or an earlier run's).
        if let Some(dir) = &cfg.critical {
            if changed && found.keys().all(|n| objects.contains_key(n)) {
                remove_unlisted(dir, &critical);
            }
        }
        let end = std::time::Instant::now() + cfg.rescan;
        while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
            std::thread::park_timeout(Duration::from_millis(50).min(cfg.rescan));
        }
    }
}

/// The critical rendition of `obj` (catalog name `name`): the file `DIR/<BLAKE3>.ts` made
/// now if an earlier scan or run has not made it, then hashed as an object of its own.
/// `None` when the file is not an MPEG-TS with H.264/H.265 key frames (said at debug level:
/// most catalog files are not), changed meanwhile, or cannot be read or written.
fn make_critical(
    cfg: &ScanConfig,
    dir: &Path,
    name: &str,
    obj: &CatalogObject,
) -> Option<CatalogObject> {
    let hex = blockcast_proto::auth::hex(&obj.entry.hash);
    let path = dir.join(format!("{hex}.ts"));
    if FileId::at(&path).is_none() {
        match filter_file(&obj.path, &path) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%name, "no critical rendition: {e}");
                return None;
            }
            Err(e) => {
                tracing::warn!(%name, "cannot make the critical rendition: {e}");
                return None;
            }
        }
        if FileId::at(&obj.path) != Some(obj.id) {
            // Made from a file that changed meanwhile: made again when it is hashed again.
            let _ = std::fs::remove_file(&path);
            return None;
        }
    }
    let id = FileId::at(&path)?;
    let input = Input {
        path: path.clone(),
        name: critical_name(&obj.entry.hash),
    };
    match crate::hash_inputs(&[input], cfg.block_size, cfg.hash_cache.as_ref()) {
        Ok((mut entries, _)) if entries.len() == 1 => Some(CatalogObject {
            path,
            id,
            entry: Arc::new(entries.remove(0)),
        }),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(%name, "cannot hash the critical rendition: {e}");
            None
        }
    }
}

/// Runs the critical filter over the file at `from` into `to` (written as `.tmp`, renamed
/// once whole). The outer error is I/O, the inner one the filter's verdict.
fn filter_file(
    from: &Path,
    to: &Path,
) -> std::io::Result<Result<(), blockcast_edge::ts::RenditionError>> {
    use blockcast_edge::ts::{CriticalFilter, RenditionConfig};
    use std::io::{Read, Write};
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = to.with_extension("tmp");
    let mut input = std::fs::File::open(from)?;
    let mut output = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut filter = CriticalFilter::new(RenditionConfig::default());
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    let verdict = loop {
        let n = input.read(&mut buf)?;
        let r = if n == 0 {
            filter.finish(&mut out)
        } else {
            filter.push(&buf[..n], &mut out)
        };
        if r.is_err() {
            break r;
        }
        output.write_all(&out)?;
        out.clear();
        if n == 0 {
            break Ok(());
        }
    };
    if verdict.is_err() {
        drop(output);
        let _ = std::fs::remove_file(&tmp);
        return Ok(verdict);
    }
    output
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&tmp, to)?;
    Ok(Ok(()))
}

/// Deletes the renditions in `dir` (files named `<64 hex digits>.ts` or `.tmp`; others are
/// left alone) that are not listed (their objects left the catalog).
fn remove_unlisted(dir: &Path, critical: &BTreeMap<String, CatalogObject>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let ours = path
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| blockcast_proto::auth::from_hex::<32>(s).is_some())
            && path.extension().is_some_and(|x| x == "ts" || x == "tmp");
        if ours && !critical.values().any(|c| c.path == path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Publishes a snapshot; returns its generation (greater than `last`: Unix microseconds, or
/// one more than the last where the clock is behind).
fn publish(
    shared: &Shared,
    objects: &BTreeMap<String, CatalogObject>,
    critical: &BTreeMap<String, CatalogObject>,
    unready: &[String],
    last: u64,
) -> u64 {
    // The renditions under their own names (two files with the same content share one).
    let mut objects = objects.clone();
    for c in critical.values() {
        objects.insert(c.entry.name.clone(), c.clone());
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let generation = (now.as_micros() as u64).max(last + 1);
    let catalog = Catalog {
        generation,
        entries: objects
            .iter()
            .map(|(name, o)| CatalogEntry {
                name: name.clone(),
                size: o.entry.size,
                hash: o.entry.hash,
            })
            .collect(),
    };
    shared.publish(Snapshot {
        catalog,
        objects,
        unready: unready.to_vec(),
        issued: now.as_secs(),
    });
    generation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names_links_and_other_files_are_not_published() {
        let d = std::env::temp_dir().join(format!("bc-catalog-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub/.hidden")).unwrap();
        std::fs::write(d.join("a.iso"), b"a").unwrap();
        std::fs::write(d.join("sub/b.bin"), b"b").unwrap();
        std::fs::write(d.join(".partial"), b"p").unwrap();
        std::fs::write(d.join("sub/.hidden/c"), b"c").unwrap();
        std::os::unix::fs::symlink(d.join("a.iso"), d.join("link")).unwrap();
        let names: Vec<String> = walk(&d).into_keys().collect();
        assert_eq!(names, ["a.iso", "sub/b.bin"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn new_changed_and_removed_files_show_in_the_snapshots() {
        let d = std::env::temp_dir().join(format!("bc-catalog-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a"), vec![1u8; 5000]).unwrap();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = ScanConfig {
            dir: d.clone(),
            block_size: 1024,
            rescan: Duration::from_millis(20),
            settle: Duration::ZERO,
            hash_cache: None,
            critical: None,
        };
        let t = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || run(cfg, &shared, &stop))
        };
        let wait = |what: &str, f: &dyn Fn(&Snapshot) -> bool| {
            for _ in 0..1000 {
                if f(&shared.latest().1) {
                    return shared.latest().1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("no snapshot with {what}");
        };
        let s = wait("a", &|s| s.catalog.get("a").is_some());
        let a = s.catalog.get("a").unwrap().clone();
        assert_eq!(a.hash, *blake3::hash(&[1u8; 5000]).as_bytes());
        assert_eq!(s.objects["a"].entry.block_hashes.len(), 5);
        let g1 = s.catalog.generation;
        std::fs::write(d.join("b"), b"new").unwrap();
        let s = wait("b", &|s| s.catalog.get("b").is_some());
        assert!(s.catalog.generation > g1);
        std::fs::write(d.join("a"), vec![2u8; 100]).unwrap();
        wait("a changed", &|s| {
            s.catalog.get("a").is_some_and(|e| e.size == 100)
        });
        std::fs::remove_file(d.join("b")).unwrap();
        wait("b gone", &|s| s.catalog.get("b").is_none());
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
