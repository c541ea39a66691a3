//! The server's content: files memory-mapped read-only, served as a block source.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A read-only mapping of a file.
struct Mapped(Option<Mmap>);

// SAFETY: the mapping's address and length are fixed for its life; it is unmapped only when
// the value is dropped, which cannot happen while an Arc to it is shared. If the file is
// truncated meanwhile, a send from it fails with EFAULT (the kernel copies), a read through
// it could fault: the server documents that inputs must not change while served.
unsafe impl StableBytes for Mapped {
    fn stable_bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// The mapped inputs, as the sender's block source and as the ring's payload sources. A
/// clone shares the mappings (each data thread's stripe holds one).
#[derive(Clone)]
pub(crate) struct Content {
    pub sources: Vec<Source>,
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
            let map = if len == 0 {
                None
            } else {
                // SAFETY: read-only shared mapping; the server requires inputs not to change
                // while they are served (README), the usual contract of a file server.
                Some(unsafe { Mmap::map(&f) }.map_err(err)?)
            };
            let m = Mapped(map);
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
            sources.push(Arc::new(m));
        }
        Ok((
            Content {
                sources,
                block_size,
                ready: None,
            },
            entries,
            cached,
        ))
    }

    /// A relay's cache: maps the files a receive loop is filling (already sized to the
    /// manifest), without hashing them. Blocks are available once `ready` has them verified.
    pub(crate) fn cached(
        paths: &[PathBuf],
        manifest: &Manifest,
        ready: Arc<Published>,
    ) -> Result<Self, NodeError> {
        let mut sources: Vec<Source> = Vec::with_capacity(paths.len());
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
            let map = if len == 0 {
                None
            } else {
                // SAFETY: read-only shared mapping of a file this process preallocated and
                // writes only through its own mapping, block by block; blocks are read from
                // here only after they are verified (and never written again).
                Some(unsafe { Mmap::map(&f) }.map_err(err)?)
            };
            sources.push(Arc::new(Mapped(map)));
        }
        Ok(Content {
            sources,
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
        let map = if len == 0 {
            None
        } else {
            // SAFETY: read-only shared mapping; the origin stops the session when the file
            // changes or disappears (it checks its identity several times a second), the
            // contract of a file server whose inputs are not rewritten in place.
            Some(unsafe { Mmap::map(&f) }.map_err(err)?)
        };
        Ok(Content {
            sources: vec![Arc::new(Mapped(map))],
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
}
