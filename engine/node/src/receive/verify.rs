//! The verify thread: blocks are rebuilt (when XOR repairs or parity stand in for some units)
//! and hashed on their own thread (another core, where there is one), so the receive thread
//! only places units.
//!
//! A block assembled in a buffer ([`super::buffers`]) is rebuilt and hashed there, while its
//! bytes are still in cache, and if it matches it is written to the file before its verdict
//! goes back (players, HTTP and relays read verified blocks through the mapping): the
//! 4 KiB-aligned middle with `O_DIRECT` through an io_uring ([`WriteRing`]: a direct write is
//! synchronous, and one at a time caps the disk well below what several in flight reach), the
//! two unaligned edges with `pwrite` (a page or two per block, written out with the rest of
//! the page cache: the state file's syncs, the kernel's flusher, the `fsync` at the end). The
//! buffer goes back with the verdict. Where `O_DIRECT` is refused the whole block goes out
//! with `pwrite`.
//!
//! A block whose units went to the file is hashed through the mapping; one to rebuild is
//! copied out of the (read-only) mapping, rebuilt and hashed in memory, and only if it
//! matches are the rebuilt units written to the file, with `pwrite`. Its pages are handed to
//! the disk at once (write-out started, not waited for), so the `fsync` at the end finds
//! little left to write. Nothing is written through the mapping, so a disk that fills up is
//! an error here, not a SIGBUS.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

use blockcast_io::os::EventFd;
use blockcast_io::{AlignedBuf, WriteDone, WriteRing};
use blockcast_proto::wire::{BlockIndex, ObjectId};
use blockcast_proto::Rebuild;

use super::store::{BlockAccess, BlockBytes};
use crate::NodeError;

/// Direct writes in flight at most (four reach what this disk gives; one caps it near
/// 1.2 GB/s: docs/DESIGN.md).
const WRITES_IN_FLIGHT: usize = 8;

/// The longest the thread waits for a write or a job in one go (either ends the wait: a
/// job pokes the thread's eventfd, which its ring polls).
const WRITE_WAIT: Duration = Duration::from_millis(100);

const ALIGN: u64 = AlignedBuf::ALIGN as u64;

/// A block to rebuild (when parity stands in for some units) and hash.
struct Job {
    object: ObjectId,
    block: BlockIndex,
    at: BlockAccess,
    expected: [u8; 32],
    rebuild: Option<Rebuild>,
}

// SAFETY: a mapped block's pointer is into a read-only file mapping that outlives the verify
// thread (joined before the store is dropped), and nothing writes the block it covers until
// the job is answered (the protocol core drops units for a block out for verification). A
// buffer is owned by the job.
unsafe impl Send for Job {}

/// A verify answer: the block, and whether it matched its hash.
pub(crate) struct Verdict {
    pub object: ObjectId,
    pub block: BlockIndex,
    pub ok: bool,
    /// The block matched, but it (or its rebuilt units) could not be written (a full disk).
    pub error: Option<std::io::Error>,
    /// The block's buffer, back to the pool.
    pub buffer: Option<AlignedBuf>,
}

/// A buffered block whose middle is being written.
struct Writing {
    object: ObjectId,
    block: BlockIndex,
    file: Arc<File>,
    /// The middle's file offset, and where it starts in the buffer.
    offset: u64,
    at: usize,
    len: usize,
}

/// The verify thread's state: its ring and the writes out.
struct Worker {
    verdicts: mpsc::Sender<Verdict>,
    /// Poked by the receive thread with each job ([`WriteRing::wake_on`]).
    wake: Arc<EventFd>,
    ring: Option<WriteRing>,
    writing: HashMap<u64, Writing>,
    done: Vec<WriteDone>,
    next_tag: u64,
    /// A direct write was refused (`EINVAL`): the rest go through the page cache.
    direct_refused: bool,
}

impl Worker {
    fn new(verdicts: mpsc::Sender<Verdict>, wake: Arc<EventFd>) -> Self {
        let ring = match WriteRing::new(WRITES_IN_FLIGHT) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(
                    "no io_uring for block writes ({e}): blocks in buffers are written through the page cache"
                );
                None
            }
        };
        Worker {
            verdicts,
            wake,
            ring,
            writing: HashMap::new(),
            done: Vec::new(),
            next_tag: 0,
            direct_refused: false,
        }
    }

    fn in_flight(&self) -> usize {
        self.ring.as_ref().map_or(0, |r| r.in_flight())
    }

    /// Takes jobs until the receive thread hangs up, then waits for the writes out.
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            let _ = self.reap(None);
            let job = if self.in_flight() == 0 {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(_) => {
                        // Nothing to hash: wait for a write, or for a job (the receive
                        // thread pokes `wake` with each; cleared before the jobs are looked
                        // at again, so none is missed).
                        if let Some(ring) = self.ring.as_mut() {
                            ring.wake_on(self.wake.as_fd());
                        }
                        let _ = self.reap(Some(WRITE_WAIT));
                        if self.ring.as_mut().is_some_and(|r| r.take_woken()) {
                            self.wake.clear();
                        }
                        continue;
                    }
                }
            };
            self.take(job);
        }
        while self.in_flight() > 0 && self.wait_for_write() {}
    }

    /// Waits for a write to complete (up to 100 ms) and answers it: `reap` for a caller that
    /// looks at the jobs only after. A poke seen earlier (which ends the ring's wait while
    /// it is not taken) is taken and cleared first; the caller looks at the jobs after this,
    /// so none is missed. Without it the wait returned at once, over and over, while the
    /// disk was busy: a spin. False if the ring failed.
    fn wait_for_write(&mut self) -> bool {
        if self.ring.as_mut().is_some_and(|r| r.take_woken()) {
            self.wake.clear();
        }
        self.reap(Some(Duration::from_millis(100)))
    }

    fn answer(&self, v: Verdict) {
        // The receive thread is gone only when it is ending; the answer does not matter then.
        let _ = self.verdicts.send(v);
    }

    fn take(&mut self, job: Job) {
        let Job {
            object,
            block,
            at,
            expected,
            rebuild,
        } = job;
        let verdict = |ok, error, buffer| Verdict {
            object,
            block,
            ok,
            error,
            buffer,
        };
        let BlockAccess {
            bytes,
            len,
            file,
            direct,
            offset,
        } = at;
        match bytes {
            BlockBytes::Mapped(ptr) => {
                // SAFETY: see `unsafe impl Send for Job`: valid for reads of `len` bytes, not
                // written by anyone while the job is outstanding.
                let mapped = unsafe { std::slice::from_raw_parts(ptr, len) };
                let v = match check_mapped(mapped, &file, offset, &expected, rebuild.as_ref()) {
                    Ok(ok) => verdict(ok, None, None),
                    Err(e) => verdict(false, Some(e), None),
                };
                self.answer(v);
            }
            BlockBytes::Buffered { mut buf, head } => {
                let Some(block_bytes) = buf.get_mut(head..head + len) else {
                    let e = std::io::Error::other("a block outside its buffer");
                    return self.answer(verdict(false, Some(e), Some(buf)));
                };
                let ok = rebuild.as_ref().is_none_or(|r| r.apply(block_bytes))
                    && blake3::hash(block_bytes).as_bytes() == &expected;
                if !ok {
                    return self.answer(verdict(false, None, Some(buf)));
                }
                let target = Target {
                    object,
                    block,
                    file,
                    direct,
                    offset,
                    head,
                    len,
                };
                self.write(target, buf);
            }
        }
    }

    /// Writes a matching buffered block to the file; its verdict goes back when the write is
    /// done (here, or from `reap` for a direct write).
    fn write(&mut self, t: Target, buf: AlignedBuf) {
        let (start, end) = (t.offset, t.offset + t.len as u64);
        let middle = start.next_multiple_of(ALIGN)..end / ALIGN * ALIGN;
        let usable = self.ring.is_some() && !self.direct_refused && !middle.is_empty();
        let direct = match (&t.direct, usable) {
            (Some(d), true) => d.clone(),
            _ => {
                let r = write_whole(&t.file, &buf[t.head..t.head + t.len], start);
                return self.answer(t.verdict(r, buf));
            }
        };
        // The edges, through the page cache (they share their pages with the neighbours).
        // Their write-out is left to the kernel and the periodic sync: started here, the page
        // a block shares with the next one went out twice, at a `sync_file_range` call per
        // edge (0.03 s of CPU per GB, measured).
        let head_edge = &buf[t.head..t.head + (middle.start - start) as usize];
        let tail_at = t.head + (middle.end - start) as usize;
        let tail_edge = &buf[tail_at..t.head + t.len];
        let edges = t
            .file
            .write_all_at(head_edge, start)
            .and_then(|()| t.file.write_all_at(tail_edge, middle.end));
        if let Err(e) = edges {
            return self.answer(t.verdict(Err(e), buf));
        }
        // Room for it: the oldest writes answered first.
        while self.ring.as_ref().is_some_and(|r| !r.has_room()) {
            if !self.wait_for_write() {
                break;
            }
        }
        let at = t.head + (middle.start - start) as usize;
        let len = (middle.end - middle.start) as usize;
        let tag = self.next_tag;
        self.next_tag += 1;
        let submitted = match self.ring.as_mut() {
            Some(ring) => ring.submit(direct, buf, at..at + len, middle.start, tag),
            None => Err((buf, std::io::Error::other("no ring for block writes"))),
        };
        match submitted {
            Ok(()) => {
                let w = Writing {
                    object: t.object,
                    block: t.block,
                    file: t.file,
                    offset: middle.start,
                    at,
                    len,
                };
                self.writing.insert(tag, w);
            }
            Err((buf, e)) => self.answer(t.verdict(Err(e), buf)),
        }
    }

    /// Takes the direct writes that are done (waiting up to `wait` for one) and answers them.
    /// False if the ring failed.
    fn reap(&mut self, wait: Option<Duration>) -> bool {
        let Some(ring) = self.ring.as_mut() else {
            return false;
        };
        if ring.in_flight() == 0 {
            return true;
        }
        let mut done = std::mem::take(&mut self.done);
        let r = ring.complete(wait, &mut done);
        self.done = done;
        self.settle();
        let Err(e) = r else {
            return true;
        };
        // A broken ring: its writes are failures (the receive stops on them), and it goes
        // (dropping it waits for what the kernel still has).
        tracing::warn!("block writes: {e}");
        for (_, w) in std::mem::take(&mut self.writing) {
            self.answer(Verdict {
                object: w.object,
                block: w.block,
                ok: false,
                error: Some(std::io::Error::other(format!("block writes: {e}"))),
                buffer: None,
            });
        }
        self.ring = None;
        false
    }

    /// Answers the writes in `self.done`.
    fn settle(&mut self) {
        // Drained, not consumed: the list keeps its room for the next reap.
        let mut done = std::mem::take(&mut self.done);
        for d in done.drain(..) {
            let Some(w) = self.writing.remove(&d.tag) else {
                continue;
            };
            let result = match d.result {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The file system took the descriptor but not the write: the rest go
                    // through the page cache.
                    if !self.direct_refused {
                        tracing::debug!(
                            "a direct write was refused ({e}): blocks in buffers are written through the page cache"
                        );
                        self.direct_refused = true;
                    }
                    write_whole(&w.file, &d.buf[w.at..w.at + w.len], w.offset)
                }
                r => r,
            };
            self.answer(Verdict {
                object: w.object,
                block: w.block,
                ok: result.is_ok(),
                error: result.err(),
                buffer: Some(d.buf),
            });
        }
        self.done = done;
    }
}

/// Where a buffered block goes.
struct Target {
    object: ObjectId,
    block: BlockIndex,
    file: Arc<File>,
    direct: Option<Arc<File>>,
    offset: u64,
    head: usize,
    len: usize,
}

impl Target {
    fn verdict(&self, r: std::io::Result<()>, buf: AlignedBuf) -> Verdict {
        Verdict {
            object: self.object,
            block: self.block,
            ok: r.is_ok(),
            error: r.err(),
            buffer: Some(buf),
        }
    }
}

/// Writes `bytes` at `offset` through the page cache and starts their write-out.
fn write_whole(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    file.write_all_at(bytes, offset)?;
    blockcast_io::os::start_writeback(file, offset, bytes.len() as u64);
    Ok(())
}

/// Whether a block of the mapping matches its hash (rebuilt first if it needs it, and then
/// written); an error if its rebuilt units could not be written.
fn check_mapped(
    mapped: &[u8],
    file: &File,
    offset: u64,
    expected: &[u8; 32],
    rebuild: Option<&Rebuild>,
) -> std::io::Result<bool> {
    let ok = match rebuild {
        None => blake3::hash(mapped).as_bytes() == expected,
        Some(r) => {
            let mut block = mapped.to_vec();
            let ok = r.apply(&mut block) && blake3::hash(&block).as_bytes() == expected;
            if ok {
                write_rebuilt(file, offset, r, &block)?;
            }
            ok
        }
    };
    if ok {
        blockcast_io::os::start_writeback(file, offset, mapped.len() as u64);
    }
    Ok(ok)
}

/// Writes the units `r` rebuilt in `block` (the whole block, rebuilt) to the file: one
/// `pwrite` per run of consecutive units.
fn write_rebuilt(file: &File, offset: u64, r: &Rebuild, block: &[u8]) -> std::io::Result<()> {
    let us = usize::from(r.unit_size());
    let units = r.rebuilt_units();
    let mut i = 0;
    while i < units.len() {
        let mut j = i + 1;
        while j < units.len() && units[j] == units[j - 1] + 1 {
            j += 1;
        }
        let start = (usize::from(units[i]) * us).min(block.len());
        let end = ((usize::from(units[j - 1]) + 1) * us).min(block.len());
        file.write_all_at(&block[start..end], offset + start as u64)?;
        i = j;
    }
    Ok(())
}

/// The receive thread's handle on the verify thread.
pub(crate) struct Verifier<'scope> {
    jobs: Option<mpsc::Sender<Job>>,
    /// Poked with each job: the verify thread waits on it beside its writes.
    wake: Arc<EventFd>,
    verdicts: mpsc::Receiver<Verdict>,
    worker: ScopedJoinHandle<'scope, f64>,
    /// Jobs out and not answered.
    outstanding: usize,
}

impl<'scope> Verifier<'scope> {
    pub(crate) fn start<'env>(scope: &'scope Scope<'scope, 'env>) -> Result<Self, NodeError> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (res_tx, verdicts) = mpsc::channel::<Verdict>();
        let wake = Arc::new(EventFd::new().map_err(|e| NodeError::spawn("the verify thread", e))?);
        let worker_wake = wake.clone();
        let worker = std::thread::Builder::new()
            .name("bc-verify".into())
            .spawn_scoped(scope, move || {
                // The ring is made here: it may be set up for this one thread.
                Worker::new(res_tx, worker_wake).run(job_rx);
                blockcast_io::os::thread_cpu_seconds()
            })
            .map_err(|e| NodeError::spawn("the verify thread", e))?;
        Ok(Verifier {
            jobs: Some(job_tx),
            wake,
            verdicts,
            worker,
            outstanding: 0,
        })
    }

    /// Hands a block out; false if the thread is gone (the block then fails, and its buffer
    /// is lost with the job).
    pub(crate) fn submit(
        &mut self,
        object: ObjectId,
        block: BlockIndex,
        at: BlockAccess,
        expected: [u8; 32],
        rebuild: Option<Rebuild>,
    ) -> bool {
        let job = Job {
            object,
            block,
            at,
            expected,
            rebuild,
        };
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if sent {
            self.wake.poke();
        }
        self.outstanding += usize::from(sent);
        sent
    }

    /// An answer, if one is in.
    pub(crate) fn try_verdict(&mut self) -> Option<Verdict> {
        let v = self.verdicts.try_recv().ok()?;
        self.outstanding -= 1;
        Some(v)
    }

    /// An answer, waiting up to `timeout` for one.
    #[cfg(test)]
    pub(crate) fn wait_verdict(&mut self, timeout: Duration) -> Option<Verdict> {
        let v = self.verdicts.recv_timeout(timeout).ok()?;
        self.outstanding -= 1;
        Some(v)
    }

    /// Blocks out for verification.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Ends the thread (after the jobs out, and the writes they started) and returns its CPU
    /// seconds.
    pub(crate) fn finish(mut self) -> f64 {
        self.jobs = None;
        // Wakes it if it waits on its writes, to see the hang-up.
        self.wake.poke();
        self.worker.join().unwrap_or(0.0)
    }
}
