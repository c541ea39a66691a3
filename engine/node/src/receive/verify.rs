//! The verify thread: blocks are rebuilt (when XOR repairs or parity stand in for some units)
//! and hashed on their own thread (another core, where there is one), so the receive thread
//! only places units. A verified block's pages are handed to the disk at once (write-out
//! started, not waited for), so the `fsync` at the end finds little left to write.

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

// SAFETY: the pointer is into a file mapping that outlives the verify thread (joined before
// the store is dropped), and the block it covers is neither read nor written by the receive
// thread until the job is answered.
unsafe impl Send for Job {}

impl Job {
    fn run(&self) -> bool {
        // SAFETY: see `unsafe impl Send for Job`: valid for reads and writes of `len` bytes,
        // and this job is the only user of them while it is outstanding.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.at.ptr, self.at.len) };
        if self.rebuild.as_ref().is_some_and(|r| !r.apply(bytes)) {
            return false;
        }
        let ok = blake3::hash(bytes).as_bytes() == &self.expected;
        if ok {
            blockcast_io::os::start_writeback(&self.at.file, self.at.offset, self.at.len as u64);
        }
        ok
    }
}

/// A verify answer: the block, and whether it matched its hash.
pub(crate) struct Verdict {
    pub object: ObjectId,
    pub block: BlockIndex,
    pub ok: bool,
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
                    let v = Verdict {
                        object: job.object,
                        block: job.block,
                        ok: job.run(),
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
