//! Block buffers: a bounded pool of aligned buffers that blocks in progress are assembled in,
//! past the page cache.
//!
//! A block whose first unit arrives while a buffer is free (or one more may be made) takes
//! it, and every unit of that attempt at the block is copied into it (by the store's
//! `flush`, from the receive batch). The verify thread hashes (and rebuilds) the block in the
//! buffer while it is still in cache, writes it to the file (its 4 KiB-aligned middle with
//! `O_DIRECT`), and hands the buffer back with its verdict. A block that finds the pool empty
//! takes the page-cache path: its units are written to the file with `pwritev` and it is
//! hashed through the mapping. A block is never half in a buffer and half in the file: the
//! choice is made at an attempt's first unit and holds until its verdict.
//!
//! Where the block lies in its buffer: at `start % ALIGN` (its file offset modulo 4 KiB), so
//! that the buffer's aligned addresses line up with the file's aligned offsets and the
//! middle of the block can be written from where it lies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;

use blockcast_io::AlignedBuf;
use blockcast_proto::wire::{BlockIndex, ObjectId};

/// What the pool holds at most by default, in bytes (about 60 one-MiB blocks).
pub const DEFAULT_BLOCK_BUFFER_BYTES: usize = 64 << 20;

/// Where an attempt at a block puts its units.
#[derive(Debug, Default)]
enum Place {
    /// No unit of the current attempt yet.
    #[default]
    Fresh,
    /// The file (through the page cache).
    File,
    /// A buffer of the pool.
    Buffer(AlignedBuf),
    /// Its buffer is with the verify thread until the verdict.
    Out,
}

/// The pool and, per block, where its current attempt is assembled.
#[derive(Debug)]
pub(crate) struct BlockBuffers {
    /// Per object, per block.
    places: Vec<Vec<Place>>,
    free: Vec<AlignedBuf>,
    /// Buffers made and not lost (free, holding a block, or out with the verify thread).
    made: usize,
    /// Buffers at most.
    most: usize,
    /// Buffers that a thread of their own makes ahead of the first units ([`Self::prepare`]),
    /// as they are made; `None` once it is done.
    coming: Option<Receiver<AlignedBuf>>,
    /// Buffers claimed for making, by that thread or by this one: never more than `most`.
    claimed: Arc<AtomicUsize>,
    /// The making threads' CPU so far, nanoseconds: the receiver's own.
    maker_cpu: Arc<AtomicU64>,
    /// Each buffer's length: a block and the offset it starts at, rounded up to 4 KiB.
    buf_len: usize,
    block_size: usize,
    limit_bytes: usize,
    /// Attempts at blocks that took a buffer, and that took the file.
    attempts: (u64, u64),
}

impl BlockBuffers {
    /// A pool of at most `limit_bytes` of buffers (0: every block through the page cache),
    /// sized once the blocks are known ([`Self::prepare`]).
    pub(crate) fn new(limit_bytes: usize) -> Self {
        BlockBuffers {
            places: Vec::new(),
            free: Vec::new(),
            made: 0,
            most: 0,
            coming: None,
            claimed: Arc::new(AtomicUsize::new(0)),
            maker_cpu: Arc::new(AtomicU64::new(0)),
            buf_len: 0,
            block_size: 0,
            limit_bytes,
            attempts: (0, 0),
        }
    }

    /// The blocks: `block_size`, and each object's count of them. The pool (no more buffers
    /// than blocks) is made from now on by a thread of its own, so that the receive thread
    /// does not make them while the first units pour in: 63 buffers are about 58 ms of
    /// system time on a 2-vCPU guest, and a receive thread slowed by that at the start is
    /// measured to take less than it can, and the rate cut to it (docs/DESIGN.md, "block
    /// buffers made ahead"). A unit that finds no buffer made yet makes one itself.
    pub(crate) fn prepare(&mut self, block_size: usize, blocks: impl Iterator<Item = usize>) {
        self.block_size = block_size;
        self.buf_len = (block_size + AlignedBuf::ALIGN - 1).next_multiple_of(AlignedBuf::ALIGN);
        self.places = blocks
            .map(|n| (0..n).map(|_| Place::Fresh).collect())
            .collect();
        let blocks: usize = self.places.iter().map(Vec::len).sum();
        self.most = (self.limit_bytes / self.buf_len.max(1)).min(blocks);
        self.claimed = Arc::new(AtomicUsize::new(self.made));
        self.coming = None;
        if self.made >= self.most {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let (claimed, most, len) = (self.claimed.clone(), self.most, self.buf_len);
        let cpu = self.maker_cpu.clone();
        let maker = std::thread::Builder::new()
            .name("bc-buffers".into())
            .spawn(move || {
                let mut last = blockcast_io::os::thread_cpu_seconds();
                while claim(&claimed, most) {
                    let Ok(b) = AlignedBuf::zeroed(len) else {
                        // No memory: no more are made, here or by the receive thread.
                        claimed.store(usize::MAX / 2, Ordering::Relaxed);
                        break;
                    };
                    let now = blockcast_io::os::thread_cpu_seconds();
                    cpu.fetch_add(((now - last) * 1e9) as u64, Ordering::Relaxed);
                    last = now;
                    if tx.send(b).is_err() {
                        break;
                    }
                }
            });
        // Without a thread the receive thread makes every buffer as before.
        self.coming = maker.ok().map(|_| rx);
    }

    /// A buffer not made before: from the making thread, or made here.
    fn fresh(&mut self) -> Option<AlignedBuf> {
        if let Some(rx) = &self.coming {
            match rx.try_recv() {
                Ok(b) => {
                    self.made += 1;
                    return Some(b);
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.coming = None,
            }
        }
        if !claim(&self.claimed, self.most) {
            // Every buffer is claimed: the making thread has the last ones in hand (a
            // millisecond each), or the pool is used up.
            let b = self.coming.as_ref().and_then(|rx| rx.recv().ok());
            if b.is_some() {
                self.made += 1;
            } else {
                // Every claim is taken and the maker is done (all sent, or out of memory):
                // the pool is what has been made, and later blocks ask no more.
                self.coming = None;
                self.most = self.made;
            }
            return b;
        }
        match AlignedBuf::zeroed(self.buf_len) {
            Ok(b) => {
                self.made += 1;
                Some(b)
            }
            Err(e) => {
                // No memory for another: this block and the next go through the page
                // cache, as when the pool is used up.
                tracing::debug!("a block buffer could not be made ({e}); pool capped");
                self.claimed.store(usize::MAX / 2, Ordering::Relaxed);
                self.most = self.made;
                None
            }
        }
    }

    /// Where block `block`'s bytes start in its buffer.
    pub(crate) fn head(&self, block: BlockIndex) -> usize {
        (block.0 as usize * self.block_size) % AlignedBuf::ALIGN
    }

    fn place(&mut self, object: ObjectId, block: BlockIndex) -> Option<&mut Place> {
        self.places
            .get_mut(object.0 as usize)?
            .get_mut(block.0 as usize)
    }

    /// A unit of `block` is about to be written: whether it goes into the block's buffer
    /// (true) or the file. An attempt's first unit decides, taking a buffer if one is free.
    pub(crate) fn place_unit(&mut self, object: ObjectId, block: BlockIndex) -> bool {
        let Some(at) = self
            .places
            .get(object.0 as usize)
            .and_then(|p| p.get(block.0 as usize))
        else {
            return false;
        };
        match at {
            Place::Buffer(_) => return true,
            Place::File | Place::Out => return false,
            Place::Fresh => {}
        }
        let buf = match self.free.pop() {
            Some(b) => Some(b),
            None if self.made < self.most => self.fresh(),
            None => None,
        };
        let buffered = buf.is_some();
        if buffered {
            self.attempts.0 += 1;
        } else {
            self.attempts.1 += 1;
        }
        if let Some(p) = self.place(object, block) {
            *p = buf.map_or(Place::File, Place::Buffer);
        }
        buffered
    }

    /// The buffer block `block` is assembled in, if it is.
    pub(crate) fn buffer_mut(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
    ) -> Option<&mut AlignedBuf> {
        match self.place(object, block)? {
            Place::Buffer(b) => Some(b),
            _ => None,
        }
    }

    /// Takes block `block`'s buffer out, to the verify thread, until its verdict.
    pub(crate) fn take(&mut self, object: ObjectId, block: BlockIndex) -> Option<AlignedBuf> {
        let p = self.place(object, block)?;
        if !matches!(p, Place::Buffer(_)) {
            return None;
        }
        match std::mem::replace(p, Place::Out) {
            Place::Buffer(b) => Some(b),
            _ => None,
        }
    }

    /// The attempt at block `block` is over (its verdict came, or it never went out): the
    /// next unit starts a new one. `buf` is its buffer back (none: on the file, or lost).
    pub(crate) fn attempt_over(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        buf: Option<AlignedBuf>,
    ) {
        let Some(p) = self.place(object, block) else {
            return;
        };
        let was = std::mem::take(p);
        match (was, buf) {
            (_, Some(b)) => self.free.push(b),
            (Place::Buffer(b), None) => self.free.push(b),
            // Its buffer went to the verify thread and did not come back: another may be made.
            (Place::Out, None) => {
                self.made -= 1;
                self.claimed.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Takes block `block`'s buffer back into the pool and has its attempt go on in the
    /// file: for a caller that reads the block through the mapping. Returns the buffer's
    /// block bytes to write to the file first (the caller puts the buffer back with
    /// [`Self::give_back`]).
    pub(crate) fn spill(&mut self, object: ObjectId, block: BlockIndex) -> Option<AlignedBuf> {
        let p = self.place(object, block)?;
        if !matches!(p, Place::Buffer(_)) {
            return None;
        }
        match std::mem::replace(p, Place::File) {
            Place::Buffer(b) => Some(b),
            _ => None,
        }
    }

    /// A spilled buffer, back into the pool.
    pub(crate) fn give_back(&mut self, buf: AlignedBuf) {
        self.free.push(buf);
    }

    /// Attempts at blocks that took a buffer, and that took the file.
    pub(crate) fn attempts(&self) -> (u64, u64) {
        self.attempts
    }

    /// CPU seconds the thread that makes the pool has spent (part of the receiver's CPU).
    pub(crate) fn maker_cpu(&self) -> f64 {
        self.maker_cpu.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Buffers made so far (for tests: whether the pool ran out).
    #[cfg(test)]
    pub(crate) fn made(&self) -> usize {
        self.made
    }

    /// Buffers at most.
    #[cfg(test)]
    pub(crate) fn most(&self) -> usize {
        self.most
    }
}

/// Claims the making of one more buffer if fewer than `most` are claimed: `claimed` counts
/// exactly the buffers made or being made (less those lost).
fn claim(claimed: &AtomicUsize, most: usize) -> bool {
    claimed
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            (c < most).then_some(c + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_keeps_its_place_until_its_attempt_is_over_and_an_empty_pool_sends_blocks_to_the_file(
    ) {
        let bs = 749 * 1400;
        let mut p = BlockBuffers::new(2 * (bs + 8192));
        p.prepare(bs, [5].into_iter());
        assert_eq!(p.most(), 2);
        let (o, b) = (ObjectId(0), |i| BlockIndex(i));
        assert!(p.place_unit(o, b(0)));
        assert!(p.place_unit(o, b(1)));
        // Used up: block 2 goes to the file, and stays there for this attempt.
        assert!(!p.place_unit(o, b(2)));
        assert!(p.place_unit(o, b(0)));
        let out = p.take(o, b(0)).unwrap();
        assert!(out.len() >= bs + p.head(b(0)));
        assert_eq!(out.as_ptr() as usize % 4096, 0);
        // Out with the verify thread: no unit goes anywhere new meanwhile.
        assert!(!p.place_unit(o, b(0)));
        assert!(!p.place_unit(o, b(3)));
        p.attempt_over(o, b(0), Some(out));
        // Block 3 went to the file while the pool was empty; block 4 takes the buffer back.
        assert!(!p.place_unit(o, b(3)));
        assert!(p.place_unit(o, b(4)));
        // The file attempt ends; the next one at it may take a buffer.
        p.attempt_over(o, b(2), None);
        assert!(!p.place_unit(o, b(2)));
        assert_eq!(p.made(), 2);
        // A buffer that went out and did not come back is made again.
        let lost = p.take(o, b(4)).unwrap();
        drop(lost);
        p.attempt_over(o, b(4), None);
        assert_eq!(p.made(), 1);
        assert!(p.place_unit(o, b(4)));
        assert_eq!(p.made(), 2);
    }

    #[test]
    fn no_more_buffers_are_made_than_there_are_blocks() {
        let bs = 749 * 1400;
        let mut p = BlockBuffers::new(64 << 20);
        p.prepare(bs, [2, 1].into_iter());
        assert_eq!(p.most(), 3);
        let o = |i| ObjectId(i);
        assert!(p.place_unit(o(0), BlockIndex(0)));
        assert!(p.place_unit(o(0), BlockIndex(1)));
        assert!(p.place_unit(o(1), BlockIndex(0)));
        assert_eq!(p.made(), 3);
        // One that went out and was lost is made again, made ahead or not.
        drop(p.take(o(1), BlockIndex(0)).unwrap());
        p.attempt_over(o(1), BlockIndex(0), None);
        assert!(p.place_unit(o(1), BlockIndex(0)));
        assert_eq!(p.made(), 3);
    }
}
