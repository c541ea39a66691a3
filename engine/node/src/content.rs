//! The server's content: files memory-mapped read-only, served as a block source.
//!
//! An input must not change while it is served: receivers check every block against the
//! hashes taken when the session started. One that does (truncated, rewritten) stops the
//! session with [`NodeError::InputChanged`]: the control thread looks at each input's size
//! and change times every [`CHECK_INTERVAL`], and a read of a page its file no longer has
//! (parity, XOR repairs, hashing read the mapping) reads zeros under a [`MappingGuard`]
//! instead of killing the server with SIGBUS, and is reported the same way. The data
//! threads' sends from such a page fail in the kernel (EFAULT) and are repaired like loss
//! until the session stops.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blockcast_io::os::MappingGuard;
use blockcast_io::{Source, StableBytes};
use blockcast_proto::wire::{BlockIndex, Manifest, ObjectEntry, ObjectId};
use blockcast_proto::BlockSource;
use memmap2::Mmap;

use crate::hashcache::HashCache;
use crate::published::Published;
use crate::NodeError;

/// One input file and the name receivers will store it under.
#[derive(Clone, Debug)]
pub struct Input {
    pub path: PathBuf,
    pub name: String,
}

/// Expands files and directories (recursively, sorted) into inputs. A file is named by its
/// file name; a directory's files by their path from the directory's parent.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<Input>, NodeError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| NodeError::Input {
            path: p.clone(),
            source,
        })?;
        let base = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "content".into());
        if meta.is_dir() {
            walk(p, &base, &mut out)?;
        } else {
            out.push(Input {
                path: p.clone(),
                name: base,
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for i in &out {
        if !seen.insert(i.name.clone()) {
            return Err(NodeError::Config(format!(
                "two inputs are both named {:?}",
                i.name
            )));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<Input>) -> Result<(), NodeError> {
    let err = |source| NodeError::Input {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}/{}", e.file_name().to_string_lossy());
        let ft = e.file_type().map_err(err)?;
        if ft.is_dir() {
            walk(&e.path(), &name, out)?;
        } else if ft.is_file() {
            out.push(Input {
                path: e.path(),
                name,
            });
        }
    }
    Ok(())
}

/// The manifest entry of one object: its BLAKE3 and each block's, computed on every core at
/// once (the whole-object hash on one thread, the blocks split over the others). The server
/// cannot send before its manifest is known, so this is start-up time every run pays: two
/// passes over 256 MiB take 0.2 s on one core here.
fn hash_object(name: String, content: &[u8], block_size: usize) -> Result<ObjectEntry, NodeError> {
    let block_size = block_size.max(1);
    if content.len() < 8 << 20 {
        return Ok(ObjectEntry::from_content(name, content, block_size));
    }
    let blocks: Vec<&[u8]> = content.chunks(block_size).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .clamp(1, 15);
    let per = blocks.len().div_ceil(workers);
    const WHAT: &str = "a hashing thread";
    let (hash, block_hashes) = std::thread::scope(|s| {
        let whole = std::thread::Builder::new()
            .spawn_scoped(s, || *blake3::hash(content).as_bytes())
            .map_err(|e| NodeError::spawn(WHAT, e))?;
        let parts = blocks
            .chunks(per.max(1))
            .map(|part| {
                std::thread::Builder::new()
                    .spawn_scoped(s, move || {
                        part.iter()
                            .map(|b| *blake3::hash(b).as_bytes())
                            .collect::<Vec<_>>()
                    })
                    .map_err(|e| NodeError::spawn(WHAT, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Every thread is joined before any failure is returned (the scope would panic on a
        // panicked thread left unjoined).
        let hash = whole.join();
        let parts: Vec<_> = parts.into_iter().map(|p| p.join()).collect();
        let hash = hash.map_err(|_| NodeError::panicked(WHAT))?;
        let mut block_hashes = Vec::with_capacity(blocks.len());
        for p in parts {
            block_hashes.extend(p.map_err(|_| NodeError::panicked(WHAT))?);
        }
        Ok::<_, NodeError>((hash, block_hashes))
    })?;
    Ok(ObjectEntry {
        name,
        size: content.len() as u64,
        hash,
        block_hashes,
    })
}

/// Hashes the inputs as `serve` would for blocks of `block_size` bytes, taking and storing
/// them in `cache` (files of 8 MiB and more): the manifest entries, and how many came from the
/// cache. A file hashed here is served later without hashing it again.
pub fn hash_inputs(
    inputs: &[Input],
    block_size: usize,
    cache: Option<&HashCache>,
) -> Result<(Vec<ObjectEntry>, usize), NodeError> {
    let (_, entries, cached) = Content::open(inputs, block_size, cache)?;
    Ok((entries, cached))
}

/// Files smaller than this are hashed every time (milliseconds; not worth a cache entry each).
const CACHED_FROM: u64 = 8 << 20;

/// How often a server looks at its inputs for a change.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Inputs looked at per check (a directory of many files is looked at in turns).
const CHECKS_PER_TURN: usize = 256;

/// A read-only mapping of a file, guarded: a page the file loses reads as zeros.
struct Mapped {
    /// Declared before `guard`: unmapped before the guard is released.
    map: Option<Mmap>,
    guard: Option<MappingGuard>,
}

impl Mapped {
    fn new(f: &File, len: u64) -> std::io::Result<Self> {
        if len == 0 {
            return Ok(Mapped {
                map: None,
                guard: None,
            });
        }
        // SAFETY: read-only shared mapping; a page the file loses while mapped reads as zeros
        // under the guard (no SIGBUS), and the change is found and stops the session.
        let map = unsafe { Mmap::map(f)? };
        let guard = MappingGuard::new(map.as_ptr(), map.len())?;
        Ok(Mapped {
            map: Some(map),
            guard: Some(guard),
        })
    }

    fn damaged(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.is_damaged())
    }
}

// SAFETY: the mapping's address and length are fixed for its life; it is unmapped only when
// the value is dropped, which cannot happen while an Arc to it is shared. If the file is
// truncated meanwhile, a send from it fails with EFAULT (the kernel copies) and a read through
// it reads zeros (the guard): the bytes stay readable, and the session is stopped.
unsafe impl StableBytes for Mapped {
    fn stable_bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// What an input was when it was mapped: a change to any of it is a change to the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Stamp {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        }
    }

    /// How `now` differs, in words.
    fn change(&self, now: &Stamp) -> Option<String> {
        if now.len != self.len {
            Some(format!("now {} bytes, was {}", now.len, self.len))
        } else if now != self {
            Some("modified".into())
        } else {
            None
        }
    }
}

/// One served input, for checking that it stays as it was.
struct Watched {
    path: PathBuf,
    file: File,
    stamp: Stamp,
}

/// The mapped inputs, as the sender's block source and as the ring's payload sources. A
/// clone shares the mappings (each data thread's stripe holds one).
#[derive(Clone)]
pub(crate) struct Content {
    pub sources: Vec<Source>,
    mapped: Vec<Arc<Mapped>>,
    /// A server's inputs as they were when mapped (none for a relay's cache, which is
    /// written as it is served).
    watched: Arc<Vec<Watched>>,
    /// The paths of `mapped`, for errors.
    paths: Arc<Vec<PathBuf>>,
    block_size: usize,
    /// A relay's cache: only verified blocks may be sent (`None`: a server's own files).
    ready: Option<Arc<Published>>,
}

impl Content {
    /// Maps every input and hashes it block by block for the manifest.
    /// Maps and hashes the inputs; with `cache`, files of 8 MiB and more take their hashes from
    /// it when an earlier run stored them for the same content, and store them otherwise.
    /// Returns the content, the manifest entries and how many came from the cache.
    pub(crate) fn open(
        inputs: &[Input],
        block_size: usize,
        cache: Option<&HashCache>,
    ) -> Result<(Self, Vec<ObjectEntry>, usize), NodeError> {
        let mut sources: Vec<Source> = Vec::with_capacity(inputs.len());
        let mut mapped = Vec::with_capacity(inputs.len());
        let mut watched = Vec::with_capacity(inputs.len());
        let mut entries = Vec::with_capacity(inputs.len());
        let mut cached = 0;
        for i in inputs {
            let err = |source| NodeError::Input {
                path: i.path.clone(),
                source,
            };
            let f = File::open(&i.path).map_err(err)?;
            let meta = f.metadata().map_err(err)?;
            let len = meta.len();
            let m = Arc::new(Mapped::new(&f, len).map_err(err)?);
            let cache = cache.filter(|_| len >= CACHED_FROM);
            let entry = match cache.and_then(|c| c.get(&i.path, &meta, block_size)) {
                Some((hash, block_hashes)) => {
                    cached += 1;
                    ObjectEntry {
                        name: i.name.clone(),
                        size: len,
                        hash,
                        block_hashes,
                    }
                }
                None => {
                    let e = hash_object(i.name.clone(), m.stable_bytes(), block_size)?;
                    if let (Some(c), Ok(after)) = (cache, f.metadata()) {
                        c.put(
                            &i.path,
                            &meta,
                            &after,
                            block_size,
                            (&e.hash, &e.block_hashes),
                        );
                    }
                    e
                }
            };
            entries.push(entry);
            sources.push(m.clone());
            mapped.push(m);
            watched.push(Watched {
                path: i.path.clone(),
                file: f,
                stamp: Stamp::of(&meta),
            });
        }
        let content = Content {
            sources,
            mapped,
            paths: Arc::new(inputs.iter().map(|i| i.path.clone()).collect()),
            watched: Arc::new(watched),
            block_size,
            ready: None,
        };
        // Hashed as they were when mapped, or not at all: a change while hashing is found
        // here, before a manifest is made of it.
        let mut all = 0..content.watched.len();
        content.check_inputs(&mut all)?;
        Ok((content, entries, cached))
    }

    /// Whether the inputs are as they were mapped: every damaged mapping, and the size and
    /// change times of the inputs `turn` names (a check goes through the rest next time;
    /// [`Content::next_check`]). A server calls it every [`CHECK_INTERVAL`].
    pub(crate) fn check_inputs(&self, turn: &mut std::ops::Range<usize>) -> Result<(), NodeError> {
        if MappingGuard::any_damaged() {
            if let Some(i) = self.mapped.iter().position(|m| m.damaged()) {
                return Err(NodeError::InputChanged {
                    path: self.paths[i].clone(),
                    what: "it shrank: a read found pages past its new end".into(),
                });
            }
        }
        for w in turn.by_ref().filter_map(|i| self.watched.get(i)) {
            let now = w.file.metadata().map(|m| Stamp::of(&m));
            let change = match now {
                Ok(now) => w.stamp.change(&now),
                Err(e) => Some(format!("it cannot be looked at: {e}")),
            };
            if let Some(what) = change {
                return Err(NodeError::InputChanged {
                    path: w.path.clone(),
                    what,
                });
            }
        }
        Ok(())
    }

    /// The inputs the next check looks at, after `last`: up to a bounded number, in turn.
    pub(crate) fn next_check(&self, last: &std::ops::Range<usize>) -> std::ops::Range<usize> {
        let n = self.watched.len();
        let start = if last.end >= n { 0 } else { last.end };
        start..(start + CHECKS_PER_TURN).min(n)
    }

    /// A relay's cache: maps the files a receive loop is filling (already sized to the
    /// manifest), without hashing them. Blocks are available once `ready` has them verified.
    pub(crate) fn cached(
        paths: &[PathBuf],
        manifest: &Manifest,
        ready: Arc<Published>,
    ) -> Result<Self, NodeError> {
        let mut sources: Vec<Source> = Vec::with_capacity(paths.len());
        let mut mapped = Vec::with_capacity(paths.len());
        for (path, o) in paths.iter().zip(&manifest.objects) {
            let err = |source| NodeError::Input {
                path: path.clone(),
                source,
            };
            let f = File::open(path).map_err(err)?;
            let len = f.metadata().map_err(err)?.len();
            if len != o.size {
                // The receive loop sized this file to the manifest: another writer changed it.
                return Err(NodeError::Internal(format!(
                    "cache file {} is {len} bytes, the manifest says {}",
                    path.display(),
                    o.size
                )));
            }
            // A file this process sized and writes with pwrite, block by block; blocks are
            // read from here only after they are verified (and never written again).
            let m = Arc::new(Mapped::new(&f, len).map_err(err)?);
            sources.push(m.clone());
            mapped.push(m);
        }
        Ok(Content {
            sources,
            mapped,
            watched: Arc::new(Vec::new()),
            paths: Arc::new(paths.to_vec()),
            block_size: manifest.block_size() as usize,
            ready: Some(ready),
        })
    }

    /// Maps one file whose manifest entry is already known (an origin's catalog hashed it),
    /// without reading it; fails if its size is no longer `size`.
    pub(crate) fn map_known(path: &Path, size: u64, block_size: usize) -> Result<Self, NodeError> {
        let err = |source| NodeError::Input {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(err)?;
        let len = f.metadata().map_err(err)?.len();
        if len != size {
            return Err(NodeError::Input {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!(
                    "changed since it was hashed ({len} bytes, {size} then)"
                )),
            });
        }
        let meta = f.metadata().map_err(err)?;
        let m = Arc::new(Mapped::new(&f, len).map_err(err)?);
        Ok(Content {
            sources: vec![m.clone()],
            mapped: vec![m],
            // Watched as a server's inputs are: a change stops the session (as the origin's
            // own check of the catalog file does).
            watched: Arc::new(vec![Watched {
                path: path.to_path_buf(),
                file: f,
                stamp: Stamp::of(&meta),
            }]),
            paths: Arc::new(vec![path.to_path_buf()]),
            block_size,
            ready: None,
        })
    }

    /// The same files, as another sender's source.
    pub(crate) fn share(&self) -> Self {
        self.clone()
    }

    /// Bytes in a whole block.
    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }

    /// What the data threads wait on before sending a block (a relay's verified blocks).
    pub(crate) fn ready(&self) -> Option<Arc<Published>> {
        self.ready.clone()
    }
}

impl BlockSource for Content {
    fn block(&self, object: ObjectId, block: BlockIndex) -> &[u8] {
        let o = self.sources[object.0 as usize].stable_bytes();
        let start = block.0 as usize * self.block_size;
        &o[start..(start + self.block_size).min(o.len())]
    }

    fn available(&self, object: ObjectId, block: BlockIndex) -> bool {
        self.ready
            .as_ref()
            .is_none_or(|r| r.is_verified(object.0, block.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_hashing_matches_the_plain_entry() {
        // Large enough to take the threaded path, with a short last block.
        let content: Vec<u8> = (0..(9usize << 20) + 12_345)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
            .collect();
        let want = ObjectEntry::from_content("x", &content, 1400 * 749);
        let got = hash_object("x".into(), &content, 1400 * 749).expect("hashing threads start");
        assert_eq!(got, want);
    }

    fn served_file(name: &str, len: usize) -> (PathBuf, Content) {
        let dir = std::env::temp_dir().join(format!("bc-content-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("input");
        std::fs::write(&path, vec![5u8; len]).expect("input");
        // Times well in the past: a change made now moves them, whatever the clock's grain.
        let past = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(past).expect("set mtime");
        let input = Input {
            path: path.clone(),
            name: "input".into(),
        };
        let (content, _, _) = Content::open(&[input], 64 << 10, None).expect("open");
        (path, content)
    }

    #[test]
    fn an_input_truncated_while_served_reads_zeros_and_is_reported_instead_of_a_sigbus() {
        let (path, content) = served_file("truncated", 3 << 16);
        let mut all = 0..1;
        assert!(content.check_inputs(&mut all).is_ok());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(4096)
            .expect("truncate");
        // What parity and XOR repairs do: read a block through the mapping, past the new end.
        let block = content.block(ObjectId(0), BlockIndex(2));
        assert!(
            block.iter().all(|&b| b == 0),
            "the lost pages read as zeros"
        );
        let e = content
            .check_inputs(&mut (0..0))
            .expect_err("the damage is found");
        assert!(
            matches!(&e, NodeError::InputChanged { path: p, .. } if p == &path),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn an_input_rewritten_in_place_while_served_is_reported() {
        let (path, content) = served_file("rewritten", 3 << 16);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&f, b"other bytes", 100).expect("rewrite");
        let e = content
            .check_inputs(&mut (0..1))
            .expect_err("the change is found");
        assert!(e.to_string().contains("modified"), "{e}");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
