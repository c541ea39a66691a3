//! What a receiver has verified, published to the threads that play it or serve it over
//! HTTP while the transfer goes on.
//!
//! The receive loop is the only writer: it publishes the manifest and output paths once, and
//! sets a block's bit after the block is verified (and written into the file). Readers check
//! the bits, wait on a condition variable for more, ask for priority through a channel, and
//! read verified bytes back from the output files. Only verified bytes are ever handed out.

use blockcast_proto::auth::Signature;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use blockcast_proto::wire::Manifest;
use blockcast_status::AtomicBitmap;
use serde::Serialize;

/// A request to fetch blocks first: `count` blocks of `object` from `block` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    pub object: u32,
    pub block: u32,
    pub count: u32,
}

/// Why a wait for a block ended without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed first.
    TimedOut,
    /// The transfer is over and the block will not come.
    Ended,
    /// No such object or block.
    OutOfRange,
}

/// The receive status shared with readers.
pub struct Published {
    /// The session id and the server's control address, from the first announce.
    session: OnceLock<(u32, std::net::SocketAddr)>,
    /// The session statement of the adopted session: when it was made and its signature.
    statement: OnceLock<(u64, Option<Signature>)>,
    manifest: OnceLock<Arc<Manifest>>,
    paths: OnceLock<Vec<PathBuf>>,
    verified: OnceLock<Vec<AtomicBitmap>>,
    generation: Mutex<u64>,
    changed: Condvar,
    ended: AtomicBool,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            session: OnceLock::new(),
            statement: OnceLock::new(),
            manifest: OnceLock::new(),
            paths: OnceLock::new(),
            verified: OnceLock::new(),
            generation: Mutex::new(0),
            changed: Condvar::new(),
            ended: AtomicBool::new(false),
        }
    }
}

impl Published {
    /// Receive loop: the manifest is known and the output files exist.
    pub(crate) fn publish_manifest(&self, manifest: &Manifest, paths: Vec<PathBuf>) {
        let bits = manifest
            .objects
            .iter()
            .map(|o| AtomicBitmap::new(o.block_hashes.len()))
            .collect();
        let _ = self.verified.set(bits);
        let _ = self.paths.set(paths);
        let _ = self.manifest.set(Arc::new(manifest.clone()));
        self.notify();
    }

    /// Receive loop: the session whose manifest was taken, its server, and its statement.
    pub(crate) fn publish_session(
        &self,
        session: u32,
        control: std::net::SocketAddr,
        statement: (u64, Option<Signature>),
    ) {
        let _ = self.session.set((session, control));
        let _ = self.statement.set(statement);
    }

    /// The adopted session's statement (a relay passes it on unchanged).
    pub fn statement(&self) -> Option<(u64, Option<Signature>)> {
        self.statement.get().copied()
    }

    /// The session id and the control address of the server first heard.
    pub fn session(&self) -> Option<(u32, std::net::SocketAddr)> {
        self.session.get().copied()
    }

    /// Paths of the output files (once the manifest is known).
    pub fn paths(&self) -> Option<&[PathBuf]> {
        self.paths.get().map(|p| p.as_slice())
    }

    /// Receive loop: block `block` of `object` is verified and in its file.
    pub(crate) fn publish_block(&self, object: u32, block: u32) {
        if let Some(v) = self.verified.get().and_then(|v| v.get(object as usize)) {
            // The bitmap's Release pairs with readers' Acquire: a reader that sees the bit
            // reads the block's bytes after they were written (and rebuilt) into the file.
            v.set(block as usize);
        }
    }

    /// Receive loop: wake the waiters (once per batch of published blocks).
    pub(crate) fn notify(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *g += 1;
        self.changed.notify_all();
    }

    /// Receive loop: the transfer is over (complete or not); waiters stop waiting.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.notify();
    }

    pub fn manifest(&self) -> Option<&Arc<Manifest>> {
        self.manifest.get()
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub fn is_verified(&self, object: u32, block: u32) -> bool {
        self.verified
            .get()
            .and_then(|v| v.get(object as usize))
            .is_some_and(|b| b.get(block as usize))
    }

    /// Verified blocks of an object, and its block count.
    pub fn verified_blocks(&self, object: u32) -> (usize, usize) {
        self.verified
            .get()
            .and_then(|v| v.get(object as usize))
            .map_or((0, 0), |b| (b.count_ones(), b.len()))
    }

    /// Bytes of `object` verified in order from its start.
    pub fn verified_prefix(&self, object: u32) -> u64 {
        let (Some(m), Some(v)) = (self.manifest(), self.verified.get()) else {
            return 0;
        };
        let Some(bits) = v.get(object as usize) else {
            return 0;
        };
        let blocks = bits.first_zero_from(0).unwrap_or(bits.len());
        let size = m.objects[object as usize].size;
        (blocks as u64 * m.block_size()).min(size)
    }

    /// How many times the receive loop has published a batch so far (for
    /// [`Published::wait_changed`]).
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the receive loop publishes a batch after `seen` (a value of
    /// [`Published::generation`] read before looking at the blocks), or the end, or
    /// `deadline`.
    pub fn wait_changed(&self, seen: u64, deadline: Instant) {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        while *g == seen && !self.is_ended() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the manifest is known (or `deadline`, or the end).
    pub fn wait_manifest(&self, deadline: Instant) -> Option<Arc<Manifest>> {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(m) = self.manifest.get() {
                return Some(m.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.is_ended() {
                return None;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until block `block` of `object` is verified. If it is not yet, asks for it (and
    /// `ahead` blocks after it) to be fetched first.
    pub fn wait_block(
        &self,
        object: u32,
        block: u32,
        ahead: u32,
        deadline: Instant,
        asks: &mpsc::Sender<Ask>,
    ) -> Result<(), WaitError> {
        let Some(m) = self.manifest() else {
            return Err(WaitError::OutOfRange);
        };
        let blocks = m
            .objects
            .get(object as usize)
            .map_or(0, |o| o.block_hashes.len() as u32);
        if block >= blocks {
            return Err(WaitError::OutOfRange);
        }
        if self.is_verified(object, block) {
            return Ok(());
        }
        let _ = asks.send(Ask {
            object,
            block,
            count: (ahead + 1).min(blocks - block),
        });
        self.wait_verified(object, block, deadline)
    }

    /// Waits until block `block` of `object` is verified, without asking for it.
    pub fn wait_verified(
        &self,
        object: u32,
        block: u32,
        deadline: Instant,
    ) -> Result<(), WaitError> {
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_verified(object, block) {
                return Ok(());
            }
            if self.is_ended() {
                return Err(WaitError::Ended);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::TimedOut);
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Reads verified bytes of `object` at `offset` into `buf` (the caller has waited for
    /// the blocks it covers). Returns the bytes read.
    pub fn read_at(&self, object: u32, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let path = self
            .paths
            .get()
            .and_then(|p| p.get(object as usize))
            .ok_or_else(|| std::io::Error::other("no such object"))?;
        let f = File::open(path)?;
        let mut done = 0;
        while done < buf.len() {
            let n = f.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// The receive status as JSON ([`ReceiveStatus`]).
    pub fn status_json(&self) -> String {
        let status = match self.manifest() {
            None => ReceiveStatus {
                manifest: false,
                ended: None,
                objects: Vec::new(),
            },
            Some(m) => ReceiveStatus {
                manifest: true,
                ended: Some(self.is_ended()),
                objects: m
                    .objects
                    .iter()
                    .enumerate()
                    .map(|(i, o)| {
                        let (blocks_verified, blocks) = self.verified_blocks(i as u32);
                        ObjectStatus {
                            name: &o.name,
                            size: o.size,
                            blocks,
                            blocks_verified,
                            verified_prefix_bytes: self.verified_prefix(i as u32),
                        }
                    })
                    .collect(),
            },
        };
        serde_json::to_string(&status)
            .expect("strings, numbers and booleans always serialize (no maps with non-string keys)")
    }
}

/// The receive status (`GET /status`): whether the manifest is known, whether the transfer is
/// over (absent until the manifest is known), and each object's progress.
#[derive(Serialize)]
struct ReceiveStatus<'a> {
    manifest: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<bool>,
    objects: Vec<ObjectStatus<'a>>,
}

/// One object of [`ReceiveStatus`]: its name and size, its blocks and how many are verified,
/// and the bytes verified in order from its start.
#[derive(Serialize)]
struct ObjectStatus<'a> {
    name: &'a str,
    size: u64,
    blocks: usize,
    blocks_verified: usize,
    verified_prefix_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockcast_proto::wire::ObjectEntry;

    #[test]
    fn status_json_is_the_documented_shape_and_escapes_names() {
        let p = Published::default();
        assert_eq!(p.status_json(), r#"{"manifest":false,"objects":[]}"#);
        // Two blocks of 16 bytes; a name with a quote, a backslash and a control character.
        let name = "a \"b\"\\c\u{1}.bin";
        let manifest = Manifest {
            unit_size: 8,
            units_per_block: 2,
            objects: vec![ObjectEntry::from_content(name, &[7u8; 20], 16)],
        };
        p.publish_manifest(&manifest, vec![PathBuf::from("/nonexistent")]);
        p.publish_block(0, 0);
        let v: serde_json::Value = serde_json::from_str(&p.status_json()).expect("valid JSON");
        assert_eq!(v["manifest"], true);
        assert_eq!(v["ended"], false);
        let o = &v["objects"][0];
        assert_eq!(o["name"], name);
        assert_eq!(o["size"], 20);
        assert_eq!(o["blocks"], 2);
        assert_eq!(o["blocks_verified"], 1);
        assert_eq!(o["verified_prefix_bytes"], 16);
    }
}
