//! Where a receiver stores objects: preallocated files. Units are queued as the protocol core
//! places them and, at the end of each receive batch, copied into their block's buffer (a
//! bounded pool, [`super::buffers`]: the verify thread hashes the block there and writes it to
//! the file past the page cache) or, for a block that found the pool empty, written with one
//! `pwritev` per run of consecutive units, straight from the batch; such blocks are read and
//! hashed through read-only shared mappings of the same files (a rebuilt block is rebuilt in
//! memory and its rebuilt units written with `pwrite`, on the verify thread).
//!
//! Why `pwritev` and not the mapping: a write through a mapping makes the kernel zero each
//! fresh page before the unit is copied over it (measured: 1 GiB into a fresh file, 0.27 s of
//! CPU against 0.48-0.72 through a mapping; docs/DESIGN.md). And nothing is ever written
//! through a mapping: where the disk can fill (no preallocation), a write through a mapping
//! that finds no space kills the process with SIGBUS, a `pwrite` returns ENOSPC.
//!
//! What is verified is recorded in a state file per content ([`super::state`]), so a
//! receive into the same `--out` resumes; the store opens existing files without truncating
//! them and tells the protocol core what they hold ([`BlockStore::held`]).
//!
//! The queued writes name where their bytes lie in the batch ([`BatchRange`]), not a pointer:
//! [`FileStore::flush`] reads them back from that batch, and a range of an older batch is
//! refused, so a write can never take bytes a later receive has put in the buffer.

use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use blockcast_io::beneath::{Access, Beneath};
use blockcast_io::os::MappingGuard;
use blockcast_io::{AlignedBuf, BatchLocator, BatchRange, ReceivedBytes};
use blockcast_proto::wire::{BlockIndex, Manifest, ObjectId};
use blockcast_proto::{BlockStore, HeldBlocks, StoreError};
use memmap2::Mmap;

use super::buffers::BlockBuffers;
use super::state::{self, LockError, StateDir, StateFile, StateLock, StateRecorder};
use crate::NodeError;

/// Where a queued unit's bytes are.
enum Staged {
    /// In the receive batch being handled.
    Batch(BatchRange),
    /// Copied into the store's own buffer (bytes that did not come from a staged batch).
    Owned(std::ops::Range<usize>),
    /// Already where they belong, in the block's buffer: the receive put them there
    /// ([`FileStore::block_place`]).
    InPlace,
}

/// One unit write not made yet.
struct PendingWrite {
    object: usize,
    block: BlockIndex,
    /// Offset in the object's file.
    offset: u64,
    len: usize,
    bytes: Staged,
    /// Into the block's buffer (else the file).
    buffered: bool,
}

/// One object's file and its read-only shared mapping (none for an empty object).
pub(crate) struct Output {
    pub path: PathBuf,
    file: Arc<File>,
    /// The same file opened with `O_DIRECT`, for blocks assembled in buffers (none where the
    /// file system refuses it, or without buffers).
    direct: Option<Arc<File>>,
    /// Kept mapped while `base` points into it; declared before `guard`, so it is unmapped
    /// before its guard goes.
    _map: Option<Mmap>,
    /// A read of the mapping past the file's end (another program shrank it) reads zeros
    /// instead of killing the process.
    guard: Option<MappingGuard>,
    /// The mapping's address and length (null and 0 for an empty object). Blocks are handed
    /// to the verify thread as their own range of it, through this pointer.
    base: (*const u8, usize),
}

/// How a [`FileStore`] makes room and treats what it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoreOptions {
    /// Reserve every object's space before the first write (`fallocate`), so a full disk is
    /// found at the start; a filesystem that cannot falls back to plain (sparse) files.
    pub preallocate: bool,
    /// Hash the blocks a state file says are verified instead of trusting it.
    pub verify_existing: bool,
    /// Write into (or replace) files found under `out` that no state file of ours names.
    pub overwrite: bool,
    /// Bytes of block buffers at most ([`super::buffers`]); 0: every block through the page
    /// cache.
    pub block_buffer_bytes: usize,
}

/// Objects stored in preallocated files, with a state file that records what is verified.
pub(crate) struct FileStore {
    out: PathBuf,
    options: StoreOptions,
    /// The lock on `out`, once taken (at the start if a state file was there, else when the
    /// manifest is known, before any file is touched).
    lock: Option<StateLock>,
    /// Why `prepare` failed, as the node reports it (the protocol core only carries text).
    failure: Option<NodeError>,
    /// Records verified blocks (from `prepare` on).
    recorder: Option<StateRecorder>,
    /// First global block number of each object (the state file's bitmaps are global).
    block_base: Vec<u64>,
    /// What the files held at `prepare`, for the protocol core.
    held: HeldBlocks,
    /// `block_mut`'s copy of a block (the node verifies on its own thread and never asks for
    /// one; a protocol core that hashes inline does), written back once it is verified.
    scratch: Option<(ObjectId, BlockIndex, Vec<u8>)>,
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
    /// The pool of block buffers, and where each block in progress is assembled.
    buffers: BlockBuffers,
    /// Units the receive wrote where they belong (no copy).
    pub(crate) in_place: u64,
}

impl FileStore {
    pub(crate) fn new(out: PathBuf, options: StoreOptions, lock: Option<StateLock>) -> Self {
        FileStore {
            out,
            options,
            lock,
            failure: None,
            recorder: None,
            block_base: Vec::new(),
            held: HeldBlocks::default(),
            scratch: None,
            files: Vec::new(),
            touched: Vec::new(),
            block_size: 0,
            staged: None,
            pending: Vec::new(),
            owned: Vec::new(),
            buffers: BlockBuffers::new(options.block_buffer_bytes),
            in_place: 0,
        }
    }

    /// The output paths, in manifest order.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    /// The datagrams of `batch` are about to be handed to the protocol core: queue their
    /// units by their place in it.
    pub(crate) fn stage(&mut self, batch: &dyn ReceivedBytes) {
        self.staged = Some(batch.locator());
    }

    /// Makes the queued unit writes, reading their bytes from `batch` (the one staged): units
    /// of blocks assembled in buffers are copied there; on the file path, each run of writes
    /// that follow each other in one file is one `pwritev` (a GRO super-datagram of
    /// consecutive units is one call).
    pub(crate) fn flush(&mut self, batch: Option<&dyn ReceivedBytes>) -> Result<(), NodeError> {
        self.staged = None;
        let mut pending = std::mem::take(&mut self.pending);
        let r = self
            .copy_buffered(&mut pending, batch)
            .and_then(|()| self.write_out(&pending, batch));
        self.pending = pending;
        self.pending.clear();
        self.owned.clear();
        r
    }

    /// Copies the queued units of blocks assembled in buffers into their buffers. A unit
    /// whose block has left its buffer since (spilled to the file) is left to `write_out`.
    fn copy_buffered(
        &mut self,
        pending: &mut [PendingWrite],
        batch: Option<&dyn ReceivedBytes>,
    ) -> Result<(), NodeError> {
        for p in pending.iter_mut().filter(|p| p.buffered) {
            let bytes = match &p.bytes {
                Staged::Batch(r) => batch.and_then(|b| b.bytes_at(r)),
                Staged::Owned(r) => self.owned.get(r.clone()),
                // Written where it belongs by the receive; its block cannot have left its
                // buffer since (a block leaves it only between batches).
                Staged::InPlace => continue,
            };
            let Some(bytes) = bytes.filter(|b| b.len() == p.len) else {
                return Err(self.error(
                    p.object,
                    std::io::Error::other("a queued unit's bytes are gone (batch reused)"),
                ));
            };
            let in_block = p.offset - p.block.0 as u64 * self.block_size as u64;
            let at = self.buffers.head(p.block) + in_block as usize;
            match self.buffers.buffer_mut(ObjectId(p.object as u32), p.block) {
                Some(buf) if at + p.len <= buf.len() => buf[at..at + p.len].copy_from_slice(bytes),
                Some(_) => {
                    return Err(NodeError::Internal(
                        "a unit outside its block's buffer".into(),
                    ))
                }
                None => p.buffered = false,
            }
        }
        Ok(())
    }

    /// Writes the queued units of blocks on the file path: one `pwritev` per run.
    fn write_out(
        &self,
        pending: &[PendingWrite],
        batch: Option<&dyn ReceivedBytes>,
    ) -> Result<(), NodeError> {
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        let mut i = 0;
        while i < pending.len() {
            if pending[i].buffered {
                i += 1;
                continue;
            }
            let (object, start) = (pending[i].object, pending[i].offset);
            let mut end = start;
            let mut j = i;
            slices.clear();
            while j < pending.len()
                && !pending[j].buffered
                && pending[j].object == object
                && pending[j].offset == end
            {
                let p = &pending[j];
                let bytes = match &p.bytes {
                    Staged::Batch(r) => batch.and_then(|b| b.bytes_at(r)),
                    Staged::Owned(r) => self.owned.get(r.clone()),
                    Staged::InPlace => None,
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

    /// Refuses to write where a receive must not: a name inside blockcast's state directory,
    /// or a file that is there but that no state file of ours names (someone else's) unless
    /// `overwrite`. With `overwrite`, a foreign regular file is written in place (its blocks
    /// that match are kept, as a copy made otherwise), and a link or a file with other names
    /// (a hard link) is removed first and made anew, so nothing outside `out` is written.
    /// Returns the root everything is opened beneath.
    fn check_targets(
        &self,
        manifest: &Manifest,
        sd: &StateDir,
        as_dir: bool,
    ) -> Result<Beneath, NodeError> {
        let root = Beneath::create(&sd.root).map_err(|source| NodeError::Output {
            path: sd.root.clone(),
            source,
        })?;
        let mut own: Option<std::collections::HashSet<PathBuf>> = None;
        for o in &manifest.objects {
            let path = self.path_for(manifest, &o.name);
            let output = |source| NodeError::Output {
                path: path.clone(),
                source,
            };
            if as_dir && o.name.split('/').next() == Some(state::STATE_DIR) {
                let why = "the name is blockcast's state directory; not written";
                return Err(output(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    why,
                )));
            }
            let Some(found) = root.entry(&path).map_err(output)? else {
                continue;
            };
            let own = own.get_or_insert_with(|| state::own_files(&self.out, !as_dir));
            if own.contains(&path) {
                continue;
            }
            if !self.options.overwrite {
                return Err(NodeError::OutputExists { path });
            }
            if !found.file || found.links > 1 {
                root.remove_file(&path).map_err(output)?;
            }
        }
        Ok(root)
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
            out.file.sync_all().map_err(|e| self.error(i, e))?;
        }
        Ok(())
    }

    /// Records what is verified durably one last time (data synced first) and stops
    /// recording: at the end of a run, whatever ended it.
    pub(crate) fn finish_state(&mut self) {
        if let Some(mut r) = self.recorder.take() {
            r.finish();
        }
    }

    /// Why `prepare` failed, for the node to report (taken once).
    pub(crate) fn take_failure(&mut self) -> Option<NodeError> {
        self.failure.take()
    }

    /// Whether a file of the mappings was shrunk by another program while we read it.
    pub(crate) fn damaged(&self) -> Option<&Path> {
        if !MappingGuard::any_damaged() {
            return None;
        }
        self.files
            .iter()
            .find(|o| o.guard.as_ref().is_some_and(|g| g.is_damaged()))
            .map(|o| o.path.as_path())
    }

    /// Block `block` of `object` as the verify thread needs it: its buffer (taken out of the
    /// store until [`Self::attempt_over`]) or where its bytes lie in the mapping, and the
    /// file and offset to write it (or start its write-out) from.
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
        let (file, direct) = (out.file.clone(), out.direct.clone());
        let bytes = match self.buffers.take(object, block) {
            Some(buf) => BlockBytes::Buffered {
                buf,
                head: self.buffers.head(block),
            },
            // SAFETY: in bounds of the live mapping, checked above.
            None => BlockBytes::Mapped(unsafe { base.add(start) }),
        };
        Some(BlockAccess {
            bytes,
            len,
            file,
            direct,
            offset: start as u64,
        })
    }

    /// Where block `block` starts in its buffer, and the bytes from there to the buffer's
    /// end, for the receive to write units' payloads in their places
    /// ([`blockcast_io::RecvBatch::place_next`]); none unless the block's current attempt is
    /// assembled in a buffer. The place stays valid until the block leaves its buffer, which
    /// happens only between batches (its verify hand-off, or a spill).
    pub(crate) fn block_place(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
    ) -> Option<(*mut u8, usize)> {
        let head = self.buffers.head(block);
        let buf = self.buffers.buffer_mut(object, block)?;
        let room = buf.len().checked_sub(head)?;
        // SAFETY: head <= buf.len() (checked above): the pointer stays within the buffer.
        Some((unsafe { buf.as_mut_ptr().add(head) }, room))
    }

    /// Takes a buffer for block `block`'s attempt ahead of its first unit, as that unit
    /// would (a free one, or a new one while the pool may grow); whether the block is (now)
    /// assembled in one.
    pub(crate) fn claim_buffer(&mut self, object: ObjectId, block: BlockIndex) -> bool {
        self.buffers.place_unit(object, block)
    }

    /// Attempts at blocks assembled in a buffer, and in the file.
    pub(crate) fn attempts(&self) -> (u64, u64) {
        self.buffers.attempts()
    }

    /// CPU seconds spent making block buffers off the receive thread.
    pub(crate) fn buffers_cpu(&self) -> f64 {
        self.buffers.maker_cpu()
    }

    /// Drops the `O_DIRECT` descriptors, as if the file system had refused them.
    #[cfg(test)]
    pub(crate) fn refuse_direct(&mut self) {
        for f in &mut self.files {
            f.direct = None;
        }
    }

    /// Whether a file is written with `O_DIRECT` (its file system took the flag).
    #[cfg(test)]
    pub(crate) fn writes_direct(&self) -> bool {
        self.files.iter().any(|f| f.direct.is_some())
    }

    /// The verify thread's answer on block `block` came (or it never went out): the next unit
    /// of the block starts a new attempt; `buf` is its buffer, back to the pool.
    pub(crate) fn attempt_over(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        buf: Option<AlignedBuf>,
    ) {
        self.buffers.attempt_over(object, block, buf);
    }

    /// Records `why` as the reason `prepare` failed and returns the protocol core's error.
    fn fail(&mut self, why: NodeError) -> StoreError {
        let e = StoreError(why.to_string());
        self.failure = Some(why);
        e
    }

    /// The lock on `out` for a receive that stores as `sd` says: taken now unless it was at
    /// the start.
    fn lock(&mut self, sd: &StateDir) -> Result<(), NodeError> {
        if self.lock.is_some() {
            return Ok(());
        }
        self.lock = Some(StateLock::acquire(sd).map_err(|e| lock_error(&self.out, e))?);
        Ok(())
    }
}

/// The node error for a lock not taken.
pub(crate) fn lock_error(out: &Path, e: LockError) -> NodeError {
    match e {
        LockError::Busy(lock) => NodeError::OutputBusy {
            path: out.to_path_buf(),
            lock,
        },
        LockError::Io(path, source) => NodeError::Output { path, source },
    }
}

/// Where the verify thread finds a block's bytes.
pub(crate) enum BlockBytes {
    /// In the read-only mapping (the block's units were written to the file).
    Mapped(*const u8),
    /// In a buffer of the pool, from `head` on (the file offset modulo 4 KiB); written to the
    /// file once it matches.
    Buffered { buf: AlignedBuf, head: usize },
}

/// A block handed to the verify thread, with the file to write it (or its write-out) to.
pub(crate) struct BlockAccess {
    pub bytes: BlockBytes,
    pub len: usize,
    pub file: Arc<File>,
    /// The file opened with `O_DIRECT` (none where refused).
    pub direct: Option<Arc<File>>,
    pub offset: u64,
}

/// One object's file as `prepare` found and left it.
struct Opened {
    file: File,
    /// It existed at its object's size: what it holds may be reused.
    had_size: bool,
}

/// Opens `path` beneath `root` (making its directories, following no link), without
/// truncating what is there, sized to `size` and (`reserve`) reserved on disk. A file system
/// that cannot reserve space gets a plain file: writes then find a full disk as they go (an
/// error, never a fault: nothing writes through a mapping).
fn open_output(root: &Beneath, path: &Path, size: u64, reserve: bool) -> std::io::Result<Opened> {
    if let Some(parent) = path.parent() {
        root.create_dirs(parent)?;
    }
    let file = root.open_file(path, Access::Create)?;
    let had = file.metadata()?.len();
    if had != size {
        file.set_len(size)?;
    }
    if size > 0 && reserve {
        match blockcast_io::os::preallocate(&file, size) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => tracing::warn!(
                "{}: this file system cannot reserve space; a disk that fills up stops the transfer (its state is kept)",
                crate::names::shown(path)
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(Opened {
        file,
        had_size: had == size && size > 0,
    })
}

/// Maps `file` (`size` bytes) read-only, guarded.
fn map_output(file: &File, size: u64) -> std::io::Result<(Option<Mmap>, Option<MappingGuard>)> {
    if size == 0 {
        return Ok((None, None));
    }
    // SAFETY: a read-only shared mapping of our output file, which this process writes only
    // with pwrite (never through a mapping) and holds the lock on; a page another program
    // truncates away reads as zeros under the guard.
    let map = unsafe { Mmap::map(file)? };
    let guard = MappingGuard::new(map.as_ptr(), map.len())?;
    Ok((Some(map), Some(guard)))
}

impl BlockStore for FileStore {
    fn prepare(&mut self, manifest: &Manifest) -> Result<(), StoreError> {
        self.block_size = manifest.block_size() as usize;
        self.buffers.prepare(
            self.block_size,
            manifest.objects.iter().map(|o| o.block_hashes.len()),
        );
        self.touched = manifest
            .objects
            .iter()
            .map(|o| vec![None; o.block_hashes.len()])
            .collect();
        let mut base = 0;
        self.block_base = manifest
            .objects
            .iter()
            .map(|o| {
                let b = base;
                base += o.block_hashes.len() as u64;
                b
            })
            .collect();
        let as_dir = manifest.objects.len() != 1 || self.out.is_dir();
        let sd = StateDir::for_out(&self.out, as_dir);
        // The lock before anything is touched: a second receive into the same place stops
        // here, the first one's files as they were.
        if let Err(e) = self.lock(&sd) {
            return Err(self.fail(e));
        }
        // Before any state file of this content exists (it names every object, so it would
        // make every file look like ours).
        let root = match self.check_targets(manifest, &sd, as_dir) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e)),
        };
        let bytes = match manifest.emit() {
            Ok(b) => b,
            Err(_) => return Err(StoreError("the manifest cannot be encoded".into())),
        };
        let hash = *blake3::hash(&bytes).as_bytes();
        // Records of other contents in these files are wrong from the first write on.
        if let Err(source) = state::retire_others(&sd, &self.out, &hash, manifest) {
            let path = sd.state_path(&hash);
            return Err(self.fail(NodeError::Output { path, source }));
        }
        let (state, recorded) = match StateFile::open(&sd, &hash, &bytes, base) {
            Ok(s) => s,
            Err(source) => {
                let path = sd.state_path(&hash);
                return Err(self.fail(NodeError::Output { path, source }));
            }
        };
        let mut had_size = Vec::with_capacity(manifest.objects.len());
        for o in &manifest.objects {
            let path = self.path_for(manifest, &o.name);
            let opened = match open_output(&root, &path, o.size, self.options.preallocate) {
                Ok(f) => f,
                Err(source) => return Err(self.fail(NodeError::Output { path, source })),
            };
            let (map, guard) = match map_output(&opened.file, o.size) {
                Ok(m) => m,
                Err(source) => return Err(self.fail(NodeError::Output { path, source })),
            };
            let base = map
                .as_ref()
                .map_or((std::ptr::null(), 0), |m| (m.as_ptr(), m.len()));
            had_size.push(opened.had_size);
            let direct = self.open_direct(&opened.file, o.size, &path);
            self.files.push(Output {
                path,
                file: Arc::new(opened.file),
                direct,
                _map: map,
                guard,
                base,
            });
        }
        self.held = self.what_is_held(manifest, recorded.as_ref(), &had_size);
        // What is kept counts as recorded, and only that: an object whose file is gone is
        // fetched again, a block to check is recorded once it matches.
        let mut verified = vec![0u8; base.div_ceil(8) as usize];
        for (o, b) in &self.held.verified {
            let g = self.block_base[o.0 as usize] + u64::from(b.0);
            verified[(g / 8) as usize] |= 1 << (g % 8);
        }
        let data = self.files.iter().map(|f| f.file.clone()).collect();
        match StateRecorder::start(state, verified, data) {
            Ok(r) => self.recorder = Some(r),
            Err(e) => return Err(self.fail(NodeError::spawn("the state thread", e))),
        }
        Ok(())
    }

    fn held(&mut self) -> HeldBlocks {
        std::mem::take(&mut self.held)
    }

    fn block_mut(&mut self, object: ObjectId, block: BlockIndex, len: usize) -> &mut [u8] {
        // A copy: nothing is written through the mapping. Written back when verified.
        let start = block.0 as usize * self.block_size;
        if let Some(buf) = self.buffers.spill(object, block) {
            // Read through the mapping from here on: what the buffer holds goes to the file.
            let head = self.buffers.head(block);
            let bytes = &buf[head..head + len];
            if let Err(source) = self.files[object.0 as usize]
                .file
                .write_all_at(bytes, start as u64)
            {
                self.failure = Some(self.error(object.0 as usize, source));
            }
            self.buffers.give_back(buf);
        }
        let (base, map_len) = self.files[object.0 as usize].base;
        assert!(start + len <= map_len, "block outside its object");
        // SAFETY: [start, start+len) lies inside the live read-only mapping (checked above).
        let bytes = unsafe { std::slice::from_raw_parts(base.add(start), len) };
        let scratch = self.scratch.get_or_insert((object, block, Vec::new()));
        if (scratch.0, scratch.1) != (object, block) || scratch.2.len() != len {
            *scratch = (object, block, bytes.to_vec());
        }
        &mut scratch.2
    }

    fn block_verified(&mut self, object: ObjectId, block: BlockIndex) {
        if let Some((o, b, bytes)) = self.scratch.take() {
            if (o, b) == (object, block) {
                let at = u64::from(b.0) * self.block_size as u64;
                if let Err(source) = self.files[o.0 as usize].file.write_all_at(&bytes, at) {
                    self.failure = Some(self.error(o.0 as usize, source));
                }
            }
        }
        if let (Some(r), Some(base)) = (&self.recorder, self.block_base.get(object.0 as usize)) {
            r.verified(base + u64::from(block.0));
        }
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
        let buffered = self.buffers.place_unit(object, block);
        let head = self.buffers.head(block);
        let in_place = buffered
            && self
                .buffers
                .buffer_mut(object, block)
                .and_then(|b| b.get(head + offset..))
                .is_some_and(|at| std::ptr::eq(at.as_ptr(), bytes.as_ptr()));
        self.in_place += u64::from(in_place);
        let staged = match self.staged.and_then(|l| l.range_of(bytes)) {
            _ if in_place => Staged::InPlace,
            Some(r) => Staged::Batch(r),
            None => {
                let at = self.owned.len();
                self.owned.extend_from_slice(bytes);
                Staged::Owned(at..at + bytes.len())
            }
        };
        self.pending.push(PendingWrite {
            object: object.0 as usize,
            block,
            offset: (start + offset) as u64,
            len: bytes.len(),
            bytes: staged,
            buffered,
        });
    }
}

impl FileStore {
    /// The `O_DIRECT` descriptor for an object's file, when blocks may be buffered and the
    /// file system allows it (said once, at debug level, where it does not).
    fn open_direct(&self, file: &File, size: u64, path: &Path) -> Option<Arc<File>> {
        if self.options.block_buffer_bytes == 0 || size == 0 {
            return None;
        }
        match blockcast_io::os::reopen_direct(file) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    tracing::debug!(
                        "{}: no O_DIRECT here ({e}): blocks in buffers are written through the page cache",
                        crate::names::shown(path)
                    )
                });
                None
            }
        }
    }

    /// What the files hold, for the protocol core: per object whose file was there at its
    /// size, the blocks the durable record names (verified, or to hash with
    /// `verify_existing`) and those only the hint names (to hash); without a state file,
    /// every block of such a file is hashed (an earlier copy, or a record lost).
    fn what_is_held(
        &self,
        manifest: &Manifest,
        recorded: Option<&state::Recorded>,
        had_size: &[bool],
    ) -> HeldBlocks {
        let mut held = HeldBlocks::default();
        for (i, o) in manifest.objects.iter().enumerate() {
            if !had_size[i] {
                continue;
            }
            for b in 0..o.block_hashes.len() as u32 {
                let g = self.block_base[i] + u64::from(b);
                let at = (ObjectId(i as u32), BlockIndex(b));
                match recorded {
                    Some(r) if state::bit(&r.durable, g) => {
                        if self.options.verify_existing {
                            held.check.push(at);
                        } else {
                            held.verified.push(at);
                        }
                    }
                    Some(r) if state::bit(&r.hint, g) => held.check.push(at),
                    Some(_) => {}
                    None => held.check.push(at),
                }
            }
        }
        held
    }
}
