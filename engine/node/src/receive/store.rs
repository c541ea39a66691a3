//! Where a receiver stores objects: preallocated files. Units are queued as the protocol core
//! places them and written with one `pwritev` per run of consecutive units, straight from the
//! receive batch they arrived in; blocks are read, rebuilt and hashed through shared
//! mappings of the same files.
//!
//! Why `pwritev` and not the mapping: a write through a mapping makes the kernel zero each
//! fresh page before the unit is copied over it (measured: 1 GiB into a fresh file, 0.27 s of
//! CPU against 0.48-0.72 through a mapping; docs/DESIGN.md).
//!
//! The queued writes name where their bytes lie in the batch ([`BatchRange`]), not a pointer:
//! [`FileStore::flush`] reads them back from that batch, and a range of an older batch is
//! refused, so a write can never take bytes a later receive has put in the buffer.

use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use blockcast_io::{BatchLocator, BatchRange, RecvBatch};
use blockcast_proto::wire::{BlockIndex, Manifest, ObjectId};
use blockcast_proto::{BlockStore, StoreError};
use memmap2::MmapMut;

use crate::NodeError;

/// Where a queued unit's bytes are.
enum Staged {
    /// In the receive batch being handled.
    Batch(BatchRange),
    /// Copied into the store's own buffer (bytes that did not come from a staged batch).
    Owned(std::ops::Range<usize>),
}

/// One unit write not made yet.
struct PendingWrite {
    object: usize,
    /// Offset in the object's file.
    offset: u64,
    len: usize,
    bytes: Staged,
}

/// One object's file and its shared mapping (none for an empty object).
pub(crate) struct Output {
    pub path: PathBuf,
    file: Arc<File>,
    map: Option<MmapMut>,
    /// The mapping's address and length (null and 0 for an empty object). Blocks are handed
    /// out as slices of their own range only, through this pointer, so the receive thread
    /// can write one block while the verify thread reads another (a `&mut` to the whole
    /// mapping would alias the verify thread's block).
    base: (*mut u8, usize),
}

/// Objects stored in preallocated files.
pub(crate) struct FileStore {
    out: PathBuf,
    pub(crate) files: Vec<Output>,
    /// Per object and block, when its first unit was written.
    pub(crate) touched: Vec<Vec<Option<Instant>>>,
    block_size: usize,
    /// The batch whose datagrams are being handled: unit payloads from it are queued by
    /// their place in it.
    staged: Option<BatchLocator>,
    pending: Vec<PendingWrite>,
    /// Bytes of units that came from elsewhere than a staged batch.
    owned: Vec<u8>,
}

impl FileStore {
    pub(crate) fn new(out: PathBuf) -> Self {
        FileStore {
            out,
            files: Vec::new(),
            touched: Vec::new(),
            block_size: 0,
            staged: None,
            pending: Vec::new(),
            owned: Vec::new(),
        }
    }

    /// The output paths, in manifest order.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    /// The datagrams of `batch` are about to be handed to the protocol core: queue their
    /// units by their place in it.
    pub(crate) fn stage(&mut self, batch: &RecvBatch) {
        self.staged = Some(batch.locator());
    }

    /// Makes the queued unit writes, reading their bytes from `batch` (the one staged): each
    /// run of writes that follow each other in one file is one `pwritev` (a GRO
    /// super-datagram of consecutive units is one call).
    pub(crate) fn flush(&mut self, batch: Option<&RecvBatch>) -> Result<(), NodeError> {
        self.staged = None;
        let pending = std::mem::take(&mut self.pending);
        let r = self.write_out(&pending, batch);
        self.pending = pending;
        self.pending.clear();
        self.owned.clear();
        r
    }

    fn write_out(
        &self,
        pending: &[PendingWrite],
        batch: Option<&RecvBatch>,
    ) -> Result<(), NodeError> {
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        let mut i = 0;
        while i < pending.len() {
            let (object, start) = (pending[i].object, pending[i].offset);
            let mut end = start;
            let mut j = i;
            slices.clear();
            while j < pending.len() && pending[j].object == object && pending[j].offset == end {
                let p = &pending[j];
                let bytes = match &p.bytes {
                    Staged::Batch(r) => batch.and_then(|b| b.bytes_at(r)),
                    Staged::Owned(r) => self.owned.get(r.clone()),
                };
                let Some(bytes) = bytes.filter(|b| b.len() == p.len) else {
                    return Err(self.error(
                        object,
                        std::io::Error::other("a queued unit's bytes are gone (batch reused)"),
                    ));
                };
                slices.push(IoSlice::new(bytes));
                end += p.len as u64;
                j += 1;
            }
            let out = &self.files[object];
            blockcast_io::os::write_all_vectored_at(&out.file, start, &slices)
                .map_err(|e| self.error(object, e))?;
            i = j;
        }
        Ok(())
    }

    fn error(&self, object: usize, source: std::io::Error) -> NodeError {
        NodeError::Output {
            path: self
                .files
                .get(object)
                .map_or_else(|| self.out.clone(), |f| f.path.clone()),
            source,
        }
    }

    fn path_for(&self, manifest: &Manifest, name: &str) -> PathBuf {
        if manifest.objects.len() == 1 && !self.out.is_dir() {
            self.out.clone()
        } else {
            self.out.join(name)
        }
    }

    /// Flushes every file to the disk (at the end).
    pub(crate) fn sync(&mut self) -> Result<(), NodeError> {
        for (i, out) in self.files.iter().enumerate() {
            if let Some(map) = &out.map {
                map.flush().map_err(|e| self.error(i, e))?;
            }
            out.file.sync_all().map_err(|e| self.error(i, e))?;
        }
        Ok(())
    }

    /// Block `block` of `object` as the verify thread needs it: where its bytes lie in the
    /// mapping, and the file and offset to start its write-out from.
    pub(crate) fn block_for_verify(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        len: usize,
    ) -> Option<BlockAccess> {
        let out = self.files.get(object.0 as usize)?;
        let start = block.0 as usize * self.block_size;
        let (base, map_len) = out.base;
        if len == 0 || start + len > map_len {
            return None;
        }
        Some(BlockAccess {
            // SAFETY: in bounds of the live mapping, checked above.
            ptr: unsafe { base.add(start) },
            len,
            file: out.file.clone(),
            offset: start as u64,
        })
    }
}

/// A block of the mapping handed to the verify thread, with the file to write it out from.
pub(crate) struct BlockAccess {
    pub ptr: *mut u8,
    pub len: usize,
    pub file: Arc<File>,
    pub offset: u64,
}

/// Creates `path` (and its directories) sized to `size`, reserved on disk, and maps it.
fn preallocate(path: &Path, size: u64) -> Result<(File, Option<MmapMut>), std::io::Error> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    if size == 0 {
        return Ok((file, None));
    }
    // Reserve every block on disk first, so a write through the mapping can never fault for
    // lack of space (SIGBUS): a full disk is reported here, as an error.
    blockcast_io::os::preallocate(&file, size)?;
    // SAFETY: the file is ours (just created and truncated) and sized; no one else maps it.
    let map = unsafe { MmapMut::map_mut(&file)? };
    Ok((file, Some(map)))
}

impl BlockStore for FileStore {
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        self.block_size = manifest.block_size() as usize;
        self.touched = manifest
            .objects
            .iter()
            .map(|o| vec![None; o.block_hashes.len()])
            .collect();
        for o in &manifest.objects {
            let path = self.path_for(manifest, &o.name);
            let (file, mut map) = preallocate(&path, o.size)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", path.display())))?;
            let base = map
                .as_mut()
                .map_or((std::ptr::null_mut(), 0), |m| (m.as_mut_ptr(), m.len()));
            self.files.push(Output {
                path,
                file: Arc::new(file),
                map,
                base,
            });
        }
        Ok(())
    }

    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8] {
        let start = block.0 as usize * self.block_size;
        let out = &self.files[object.0 as usize];
        let (base, map_len) = out.base;
        assert!(start + len <= map_len, "block outside its object");
        let touched = &mut self.touched[object.0 as usize][block.0 as usize];
        if touched.is_none() {
            // Fault the block's pages in with one call instead of one fault per page (the
            // kernel zeroes them either way). Advice only: on failure pages fault one by one.
            *touched = Some(Instant::now());
            if let Some(map) = &out.map {
                let _ = map.advise_range(memmap2::Advice::PopulateWrite, start, len);
            }
        }
        // SAFETY: [start, start+len) lies inside the live mapping (checked above; the mapping
        // is owned by `self.files` and unmapped only when the store is dropped, after the
        // verify thread has been joined). The slice covers this block only: the protocol core
        // writes a block only while it is not being verified, and the verify thread reads only
        // a block the core has handed out (`VerifyBlock`) and does not write until answered.
        unsafe { std::slice::from_raw_parts_mut(base.add(start), len) }
    }

    fn write_unit(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        len: usize,
        offset: usize,
        bytes: &[u8],
    ) {
        let start = block.0 as usize * self.block_size;
        debug_assert!(offset + bytes.len() <= len, "unit outside its block");
        let touched = &mut self.touched[object.0 as usize][block.0 as usize];
        if touched.is_none() {
            *touched = Some(Instant::now());
        }
        let staged = match self.staged.and_then(|l| l.range_of(bytes)) {
            Some(r) => Staged::Batch(r),
            None => {
                let at = self.owned.len();
                self.owned.extend_from_slice(bytes);
                Staged::Owned(at..at + bytes.len())
            }
        };
        self.pending.push(PendingWrite {
            object: object.0 as usize,
            offset: (start + offset) as u64,
            len: bytes.len(),
            bytes: staged,
        });
    }
}
