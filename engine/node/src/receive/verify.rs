//! The verify thread: blocks are rebuilt (when XOR repairs or parity stand in for some units)
//! and hashed on their own thread (another core, where there is one), so the receive thread
//! only places units. A verified block's pages are handed to the disk at once (write-out
//! started, not waited for), so the `fsync` at the end finds little left to write.
//!
//! A block to rebuild is copied out of the (read-only) mapping, rebuilt and hashed in memory,
//! and only if it matches are the rebuilt units written to the file, with `pwrite`: nothing
//! is written through the mapping, so a disk that fills up is an error here, not a SIGBUS.

use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread::{Scope, ScopedJoinHandle};

use blockcast_proto::wire::{BlockIndex, ObjectId};
use blockcast_proto::Rebuild;

use super::store::BlockAccess;
use crate::NodeError;

/// A block to rebuild (when parity stands in for some units) and hash.
struct Job {
    object: ObjectId,
    block: BlockIndex,
    at: BlockAccess,
    expected: [u8; 32],
    rebuild: Option<Rebuild>,
}

// SAFETY: the pointer is into a read-only file mapping that outlives the verify thread
// (joined before the store is dropped), and nothing writes the block it covers until the job
// is answered (the protocol core drops units for a block out for verification).
unsafe impl Send for Job {}

impl Job {
    /// Whether the block matches its hash (rebuilt first if it needs it, and then written);
    /// an error if its rebuilt units could not be written.
    fn run(&self) -> std::io::Result<bool> {
        // SAFETY: see `unsafe impl Send for Job`: valid for reads of `len` bytes, not written
        // by anyone while the job is outstanding.
        let mapped = unsafe { std::slice::from_raw_parts(self.at.ptr, self.at.len) };
        let ok = match &self.rebuild {
            None => blake3::hash(mapped).as_bytes() == &self.expected,
            Some(r) => {
                let mut block = mapped.to_vec();
                let ok = r.apply(&mut block) && blake3::hash(&block).as_bytes() == &self.expected;
                if ok {
                    self.write_rebuilt(r, &block)?;
                }
                ok
            }
        };
        if ok {
            blockcast_io::os::start_writeback(&self.at.file, self.at.offset, self.at.len as u64);
        }
        Ok(ok)
    }

    /// Writes the units `r` rebuilt in `block` (the whole block, rebuilt) to the file: one
    /// `pwrite` per run of consecutive units.
    fn write_rebuilt(&self, r: &Rebuild, block: &[u8]) -> std::io::Result<()> {
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
            self.at
                .file
                .write_all_at(&block[start..end], self.at.offset + start as u64)?;
            i = j;
        }
        Ok(())
    }
}

/// A verify answer: the block, and whether it matched its hash.
pub(crate) struct Verdict {
    pub object: ObjectId,
    pub block: BlockIndex,
    pub ok: bool,
    /// The block matched, but its rebuilt units could not be written (a full disk).
    pub error: Option<std::io::Error>,
}

/// The receive thread's handle on the verify thread.
pub(crate) struct Verifier<'scope> {
    jobs: Option<mpsc::Sender<Job>>,
    verdicts: mpsc::Receiver<Verdict>,
    worker: ScopedJoinHandle<'scope, f64>,
    /// Jobs out and not answered.
    outstanding: usize,
}

impl<'scope> Verifier<'scope> {
    pub(crate) fn start<'env>(scope: &'scope Scope<'scope, 'env>) -> Result<Self, NodeError> {
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let (res_tx, verdicts) = mpsc::channel::<Verdict>();
        let worker = std::thread::Builder::new()
            .name("bc-verify".into())
            .spawn_scoped(scope, move || {
                for job in job_rx {
                    let (ok, error) = match job.run() {
                        Ok(ok) => (ok, None),
                        Err(e) => (false, Some(e)),
                    };
                    let v = Verdict {
                        object: job.object,
                        block: job.block,
                        ok,
                        error,
                    };
                    if res_tx.send(v).is_err() {
                        break;
                    }
                }
                blockcast_io::os::thread_cpu_seconds()
            })
            .map_err(|e| NodeError::spawn("the verify thread", e))?;
        Ok(Verifier {
            jobs: Some(job_tx),
            verdicts,
            worker,
            outstanding: 0,
        })
    }

    /// Hands a block out; false if the thread is gone (the block then fails).
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
        self.outstanding += usize::from(sent);
        sent
    }

    /// An answer, if one is in.
    pub(crate) fn try_verdict(&mut self) -> Option<Verdict> {
        let v = self.verdicts.try_recv().ok()?;
        self.outstanding -= 1;
        Some(v)
    }

    /// Blocks out for verification.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Ends the thread (after the jobs out) and returns its CPU seconds.
    pub(crate) fn finish(mut self) -> f64 {
        self.jobs = None;
        self.worker.join().unwrap_or(0.0)
    }
}
